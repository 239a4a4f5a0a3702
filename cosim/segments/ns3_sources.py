"""The C++ the ns-3 segment worker compiles into its own process through cppyy (never imported by cosim itself).

Building and driving ns-3 from C++ rather than through cppyy's Python proxies keeps every object alive in C++
(a helper collected by Python silently broke an LR-WPAN channel), lets sends be scheduled (a Python callable
cannot be), and keeps a window's work in one C++ call. ``CORE`` is compiled once per process; each medium's
builder only when a scenario first uses that medium, after its ns-3 library is loaded.
"""

from __future__ import annotations

# Order of events at one nanosecond: ns-3 orders events by (time, insertion number), so a send inserted in a later
# `run` call would land behind an internal event that an earlier call inserted for the same instant, and the
# results would depend on how the coordinator chunks time. The scheduler below orders by (time, class, insertion):
# the sends' dispatch events (class 0) first, then every ns-3 event (class 1), then the window's stop (class 2).
# A dispatch hands the send to its node as a fresh zero-delay event, so ns-3's own events keep their contexts.
CORE = r"""
#include "ns3/simulator.h"
#include "ns3/scheduler.h"
#include "ns3/event-impl.h"
#include "ns3/global-value.h"
#include "ns3/config.h"
#include "ns3/string.h"
#include "ns3/boolean.h"
#include "ns3/uinteger.h"
#include "ns3/rng-seed-manager.h"
#include "ns3/tag.h"
#include "ns3/packet.h"
#include "ns3/node.h"
#include "ns3/node-container.h"
#include "ns3/net-device-container.h"
#include "ns3/socket.h"
#include "ns3/inet-socket-address.h"
#include "ns3/inet6-socket-address.h"
#include "ns3/ipv4-l3-protocol.h"
#include "ns3/ipv6-l3-protocol.h"
#include "ns3/ipv4-address-generator.h"
#include "ns3/ipv6-address-generator.h"
#include "ns3/mac8-address.h"
#include "ns3/mac16-address.h"
#include "ns3/mac48-address.h"
#include "ns3/mac64-address.h"
#include "ns3/udp-socket-factory.h"
#include "ns3/internet-stack-helper.h"
#include "ns3/ipv4-address-helper.h"
#include "ns3/ipv6-address-helper.h"
#include "ns3/traffic-control-helper.h"
#include "ns3/traffic-control-layer.h"
#include "ns3/neighbor-cache-helper.h"
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace cosimns {
using namespace ns3;

const uint32_t CTX_SEND = 0xfffffff0u;
const uint32_t CTX_STOP = 0xfffffff1u;

class OrderedScheduler;
OrderedScheduler* g_sched = nullptr;

class OrderedScheduler : public Scheduler {
  public:
    static TypeId GetTypeId() {
        static TypeId tid = TypeId("cosimns::OrderedScheduler")
                                .SetParent<Scheduler>()
                                .SetGroupName("Core")
                                .AddConstructor<OrderedScheduler>();
        return tid;
    }
    OrderedScheduler() { g_sched = this; }
    ~OrderedScheduler() override { if (g_sched == this) g_sched = nullptr; }
    void Insert(const Event& ev) override { m_events.emplace(Key(ev.key), ev); }
    bool IsEmpty() const override { return m_events.empty(); }
    Event PeekNext() const override { return m_events.begin()->second; }
    Event RemoveNext() override {
        auto it = m_events.begin();
        Event ev = it->second;
        m_events.erase(it);
        return ev;
    }
    void Remove(const Event& ev) override { m_events.erase(Key(ev.key)); }

  private:
    using K = std::tuple<uint64_t, int, uint32_t>;
    static K Key(const EventKey& k) {
        int cls = k.m_context == CTX_SEND ? 0 : (k.m_context == CTX_STOP ? 2 : 1);
        return K(k.m_ts, cls, k.m_uid);
    }
    std::map<K, Event> m_events;
};

// The packet's id travels as a byte tag over its payload: it takes no bytes on the air, and byte tags survive
// header changes, fragmentation and reassembly (IPv4, 6LoWPAN).
class PidTag : public Tag {
  public:
    static TypeId GetTypeId() {
        static TypeId tid = TypeId("cosimns::PidTag").SetParent<Tag>().SetGroupName("Network").AddConstructor<PidTag>();
        return tid;
    }
    TypeId GetInstanceTypeId() const override { return GetTypeId(); }
    uint32_t GetSerializedSize() const override { return 8; }
    void Serialize(TagBuffer i) const override { i.WriteU64(pid); }
    void Deserialize(TagBuffer i) override { pid = i.ReadU64(); }
    void Print(std::ostream& os) const override { os << "pid=" << pid; }
    uint64_t pid = 0;
};

const uint16_t PORT = 9;

struct Endpoint {
    Ptr<Node> node;
    Ptr<Socket> socket;
    Address to;  // the socket address a sender sends to, to reach this endpoint
};

// Packets in flight only: one leaves at its arrival or final drop, so memory follows the traffic in flight, and
// anything later about it (its frame still heard, a late duplicate) is ignored.
struct Pkt {
    int src;
    int dst;
};

std::vector<Endpoint> g_eps;
std::unordered_map<uint64_t, Pkt> g_pkts;
std::vector<uint64_t> g_arrPid;
std::vector<int64_t> g_arrNs;
std::vector<uint64_t> g_dropPid;
std::vector<int64_t> g_dropNs;
std::vector<std::string> g_dropReason;
int64_t g_stream = 0;
std::string g_error;

bool FindPid(Ptr<const Packet> p, uint64_t& pid) {
    PidTag tag;
    if (p && p->FindFirstMatchingByteTag(tag)) {
        pid = tag.pid;
        return true;
    }
    return false;
}

// A final drop counts once per packet, and only where it is final: at a node that transmits it (any node on the
// way: an access point forwards), or, for a reception-side drop, at its destination (every node of a shared
// medium hears every frame).
void Drop(uint64_t pid, int ep, const std::string& reason, bool rxSide) {
    auto it = g_pkts.find(pid);
    if (it == g_pkts.end() || (rxSide && it->second.dst != ep)) return;
    g_pkts.erase(it);
    g_dropPid.push_back(pid);
    g_dropNs.push_back(Simulator::Now().GetNanoSeconds());
    g_dropReason.push_back(reason);
}

void DropPacket(Ptr<const Packet> p, int ep, const std::string& reason, bool rxSide) {
    uint64_t pid;
    if (FindPid(p, pid)) Drop(pid, ep, reason, rxSide);
}

void TxDropTrace(int ep, std::string reason, Ptr<const Packet> p) { DropPacket(p, ep, reason, false); }
void RxDropTrace(int ep, std::string reason, Ptr<const Packet> p) { DropPacket(p, ep, reason, true); }

std::string Ipv4Reason(Ipv4L3Protocol::DropReason r) {
    switch (r) {
        case Ipv4L3Protocol::DROP_TTL_EXPIRED: return "ttl_expired";
        case Ipv4L3Protocol::DROP_NO_ROUTE: return "no_route";
        case Ipv4L3Protocol::DROP_BAD_CHECKSUM: return "bad_checksum";
        case Ipv4L3Protocol::DROP_INTERFACE_DOWN: return "interface_down";
        case Ipv4L3Protocol::DROP_ROUTE_ERROR: return "route_error";
        case Ipv4L3Protocol::DROP_FRAGMENT_TIMEOUT: return "fragment_timeout";
        default: return "";
    }
}

std::string Ipv6Reason(Ipv6L3Protocol::DropReason r) {
    switch (r) {
        case Ipv6L3Protocol::DROP_TTL_EXPIRED: return "ttl_expired";
        case Ipv6L3Protocol::DROP_NO_ROUTE: return "no_route";
        case Ipv6L3Protocol::DROP_INTERFACE_DOWN: return "interface_down";
        case Ipv6L3Protocol::DROP_ROUTE_ERROR: return "route_error";
        case Ipv6L3Protocol::DROP_UNKNOWN_PROTOCOL: return "unknown_protocol";
        case Ipv6L3Protocol::DROP_UNKNOWN_OPTION: return "unknown_option";
        case Ipv6L3Protocol::DROP_MALFORMED_HEADER: return "malformed_header";
        case Ipv6L3Protocol::DROP_FRAGMENT_TIMEOUT: return "fragment_timeout";
        default: return "";
    }
}

// IP-level drops are final wherever they happen (the source: no route; the destination: reassembly timed out);
// a duplicate (DROP_DUPLICATE) is not a loss.
void Ipv4DropTrace(int ep, const Ipv4Header&, Ptr<const Packet> p, Ipv4L3Protocol::DropReason r, Ptr<Ipv4>, uint32_t) {
    std::string reason = Ipv4Reason(r);
    if (!reason.empty()) DropPacket(p, ep, reason, false);
}

void Ipv6DropTrace(int ep, const Ipv6Header&, Ptr<const Packet> p, Ipv6L3Protocol::DropReason r, Ptr<Ipv6>, uint32_t) {
    std::string reason = Ipv6Reason(r);
    if (!reason.empty()) DropPacket(p, ep, reason, false);
}

void Receive(int ep, Ptr<Socket> socket) {
    Address from;
    Ptr<Packet> p;
    while ((p = socket->RecvFrom(from))) {
        uint64_t pid;
        if (!FindPid(p, pid)) continue;
        auto it = g_pkts.find(pid);
        if (it == g_pkts.end() || it->second.dst != ep) continue;
        g_pkts.erase(it);
        g_arrPid.push_back(pid);
        g_arrNs.push_back(Simulator::Now().GetNanoSeconds());
    }
}

// Called once per process before anything else: the ordered scheduler for every simulator built from now on.
void Setup() {
    OrderedScheduler::GetTypeId();  // registered before it is named (NS_OBJECT_ENSURE_REGISTERED does this in ns-3)
    PidTag::GetTypeId();
    GlobalValue::Bind("SchedulerType", StringValue("cosimns::OrderedScheduler"));
}

// A fresh simulation: everything ns-3 keeps between simulations in one process is reset, so a rebuild gives the
// same results as a new process (with every helper's AssignStreams called by the builders).
void Reset(uint32_t seed) {
    Simulator::Destroy();
    g_eps.clear();
    g_pkts.clear();
    g_arrPid.clear(); g_arrNs.clear();
    g_dropPid.clear(); g_dropNs.clear(); g_dropReason.clear();
    Ipv4AddressGenerator::Reset();
    Ipv6AddressGenerator::Reset();
    Mac8Address::ResetAllocationIndex();
    Mac16Address::ResetAllocationIndex();
    Mac48Address::ResetAllocationIndex();
    Mac64Address::ResetAllocationIndex();
    RngSeedManager::SetSeed(seed);
    RngSeedManager::SetRun(1);
    g_stream = 0;
    // No duplicate address detection and no router solicitations: addresses are static and a segment has no router.
    Config::SetDefault("ns3::Icmpv6L4Protocol::DAD", BooleanValue(false));
    Simulator::Now();  // creates the simulator (with the ordered scheduler) now
}

// One UDP socket per node, bound to the port every send goes to; IP and traffic-control drop traces hooked.
int AddEndpoint(Ptr<Node> node, Address to, bool ipv6) {
    int ep = (int)g_eps.size();
    Ptr<Socket> socket = Socket::CreateSocket(node, UdpSocketFactory::GetTypeId());
    if (ipv6) {
        socket->Bind(Inet6SocketAddress(Ipv6Address::GetAny(), PORT));
        node->GetObject<Ipv6L3Protocol>()->TraceConnectWithoutContext("Drop", MakeBoundCallback(&Ipv6DropTrace, ep));
    } else {
        socket->Bind(InetSocketAddress(Ipv4Address::GetAny(), PORT));
        node->GetObject<Ipv4L3Protocol>()->TraceConnectWithoutContext("Drop", MakeBoundCallback(&Ipv4DropTrace, ep));
    }
    socket->SetRecvCallback(MakeBoundCallback(&Receive, ep));
    // Without a queue disc, the traffic control layer drops what a stopped (full) device queue cannot take.
    node->GetObject<TrafficControlLayer>()->TraceConnectWithoutContext(
        "TcDrop", MakeBoundCallback(&TxDropTrace, ep, std::string("queue_full")));
    g_eps.push_back(Endpoint{node, socket, to});
    return ep;
}

void DoSend(uint64_t pid, uint32_t size) {
    auto it = g_pkts.find(pid);
    if (it == g_pkts.end()) return;
    Ptr<Socket> socket = g_eps[it->second.src].socket;  // copied: a drop inside SendTo erases the entry
    int src = it->second.src;
    Ptr<Packet> p = Create<Packet>(size);
    PidTag tag;
    tag.pid = pid;
    p->AddByteTag(tag);
    if (socket->SendTo(p, 0, g_eps[it->second.dst].to) < 0) {
        Socket::SocketErrno err = socket->GetErrno();
        Drop(pid, src, err == Socket::ERROR_NOROUTETOHOST ? "no_route"
                       : err == Socket::ERROR_MSGSIZE ? "message_too_long" : "socket_error", false);
    }
}

void Dispatch(uint64_t pid, uint32_t size) {
    auto it = g_pkts.find(pid);
    if (it == g_pkts.end()) return;
    Simulator::ScheduleWithContext(g_eps[it->second.src].node->GetId(), Seconds(0), &DoSend, pid, size);
}

// Returns false (with g_error) when the send is in the simulated past or its pid is still in flight.
bool Send(uint64_t pid, int64_t atNs, int src, int dst, uint32_t size) {
    int64_t now = Simulator::Now().GetNanoSeconds();
    if (atNs < now) { g_error = "its time is in the worker's past"; return false; }
    if (g_pkts.count(pid)) { g_error = "its pid is still in flight (pids are unique in a run)"; return false; }
    g_pkts[pid] = Pkt{src, dst};
    Simulator::ScheduleWithContext(CTX_SEND, NanoSeconds(atNs - now), &Dispatch, pid, size);
    return true;
}

void StopNow() { Simulator::Stop(); }

// Runs every event strictly before untilNs; returns the time of the next event (ns), or -1 when none is left.
int64_t RunUntil(int64_t untilNs) {
    int64_t now = Simulator::Now().GetNanoSeconds();
    if (untilNs - 1 >= now) {
        Simulator::ScheduleWithContext(CTX_STOP, NanoSeconds(untilNs - 1 - now), &StopNow);
        Simulator::Run();
    }
    if (!g_sched || g_sched->IsEmpty()) return -1;
    return (int64_t)g_sched->PeekNext().key.m_ts;
}

void ClearResults() {
    g_arrPid.clear(); g_arrNs.clear();
    g_dropPid.clear(); g_dropNs.clear(); g_dropReason.clear();
}

// The device's (or MAC's) own queue is the segment's queue: the default queue disc an address helper may install
// (FqCoDel on IPv4) goes, so queue_packets means what it says.
void RemoveQueueDiscs(NetDeviceContainer devs) {
    TrafficControlHelper tch;
    for (uint32_t i = 0; i < devs.GetN(); ++i) {
        Ptr<TrafficControlLayer> tc = devs.Get(i)->GetNode()->GetObject<TrafficControlLayer>();
        if (tc && tc->GetRootQueueDiscOnDevice(devs.Get(i))) tch.Uninstall(devs.Get(i));
    }
}

// IPv4 on the segment's devices (10.<segment>.0.0/16), the device's own queue, static ARP entries (no address
// resolution before the first packet), one endpoint per node. Returns the first endpoint.
int Ipv4Up(NodeContainer nodes, NetDeviceContainer devs, uint32_t segment) {
    InternetStackHelper internet;
    internet.SetIpv6StackInstall(false);
    internet.Install(nodes);
    g_stream += internet.AssignStreams(nodes, g_stream);
    Ipv4AddressHelper addresses;
    addresses.SetBase(Ipv4Address((10u << 24) | (segment << 16)), Ipv4Mask("255.255.0.0"));
    Ipv4InterfaceContainer ifs = addresses.Assign(devs);
    RemoveQueueDiscs(devs);
    NeighborCacheHelper neighbours;
    neighbours.PopulateNeighborCache(devs);
    int first = (int)g_eps.size();
    for (uint32_t i = 0; i < nodes.GetN(); ++i) {
        AddEndpoint(nodes.Get(i), InetSocketAddress(ifs.GetAddress(i), PORT), false);
    }
    return first;
}

}  // namespace cosimns
"""

# The wired media: their devices' drop traces on top of the IPv4 set-up (Ipv4Up, in CORE).
WIRED = r"""
#include "ns3/data-rate.h"
#include "ns3/queue-size.h"
#include "ns3/nstime.h"

namespace cosimns {
int WireUp(NodeContainer nodes, NetDeviceContainer devs, uint32_t segment, const char* txDropReason) {
    int first = Ipv4Up(nodes, devs, segment);
    for (uint32_t i = 0; i < nodes.GetN(); ++i) {
        int ep = first + (int)i;
        Ptr<NetDevice> dev = devs.Get(i);
        dev->TraceConnectWithoutContext("MacTxDrop", MakeBoundCallback(&TxDropTrace, ep, std::string("queue_full")));
        dev->TraceConnectWithoutContext("PhyTxDrop", MakeBoundCallback(&TxDropTrace, ep, std::string(txDropReason)));
        dev->TraceConnectWithoutContext("PhyRxDrop", MakeBoundCallback(&RxDropTrace, ep, std::string("phy_rx_drop")));
    }
    return first;
}
}  // namespace cosimns
"""

CSMA = r"""
#include "ns3/csma-helper.h"

namespace cosimns {
int BuildCsma(uint32_t segment, uint32_t n, std::string rate, int64_t delayNs, uint32_t queuePackets) {
    NodeContainer nodes;
    nodes.Create(n);
    CsmaHelper csma;
    csma.SetChannelAttribute("DataRate", DataRateValue(DataRate(rate)));
    csma.SetChannelAttribute("Delay", TimeValue(NanoSeconds(delayNs)));
    csma.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize",
                  QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS, queuePackets)));
    NetDeviceContainer devs = csma.Install(nodes);
    g_stream += csma.AssignStreams(devs, g_stream);
    // CSMA's PhyTxDrop: the backoff gave up (the bus stayed busy).
    return WireUp(nodes, devs, segment, "channel_access_failure");
}
}  // namespace cosimns
"""

P2P = r"""
#include "ns3/point-to-point-helper.h"

namespace cosimns {
int BuildP2p(uint32_t segment, std::string rate, int64_t delayNs, uint32_t queuePackets) {
    NodeContainer nodes;
    nodes.Create(2);
    PointToPointHelper p2p;
    p2p.SetDeviceAttribute("DataRate", DataRateValue(DataRate(rate)));
    p2p.SetChannelAttribute("Delay", TimeValue(NanoSeconds(delayNs)));
    p2p.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize",
                 QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS, queuePackets)));
    NetDeviceContainer devs = p2p.Install(nodes);
    return WireUp(nodes, devs, segment, "phy_tx_drop");
}
}  // namespace cosimns
"""

# Shared by the radios: a propagation loss model by name, and node positions.
RADIO = r"""
#include "ns3/propagation-loss-model.h"
#include "ns3/propagation-delay-model.h"
#include "ns3/constant-position-mobility-model.h"
#include "ns3/double.h"
#include "ns3/vector.h"

namespace cosimns {
Ptr<PropagationLossModel> MakeLoss(std::string model, double frequencyHz, double rangeM) {
    if (model == "friis") {
        Ptr<FriisPropagationLossModel> m = CreateObject<FriisPropagationLossModel>();
        m->SetFrequency(frequencyHz);
        return m;
    }
    if (model == "range") {
        Ptr<RangePropagationLossModel> m = CreateObject<RangePropagationLossModel>();
        m->SetAttribute("MaxRange", DoubleValue(rangeM));
        return m;
    }
    // log-distance, exponent 3, its 1 m reference loss the free-space loss at the carrier frequency
    Ptr<LogDistancePropagationLossModel> m = CreateObject<LogDistancePropagationLossModel>();
    double lambda = 299792458.0 / frequencyHz;
    m->SetReference(1.0, 20.0 * std::log10(4.0 * M_PI / lambda));
    return m;
}

Ptr<ConstantPositionMobilityModel> Place(Ptr<Node> node, double x, double y, double z) {
    Ptr<ConstantPositionMobilityModel> m = CreateObject<ConstantPositionMobilityModel>();
    m->SetPosition(Vector(x, y, z));
    node->AggregateObject(m);
    return m;
}
}  // namespace cosimns
"""

LRWPAN = r"""
#include "ns3/lr-wpan-net-device.h"
#include "ns3/lr-wpan-mac.h"
#include "ns3/lr-wpan-phy.h"
#include "ns3/lr-wpan-spectrum-value-helper.h"
#include "ns3/single-model-spectrum-channel.h"
#include "ns3/sixlowpan-helper.h"
#include "ns3/sixlowpan-net-device.h"
#include "ns3/ipv6-interface.h"
#include "ns3/ndisc-cache.h"

namespace cosimns {
std::unordered_map<int, lrwpan::MacState> g_lrState;
std::unordered_map<int, std::unordered_map<uint64_t, int>> g_lrQueued;  // packet uid -> frames in the MAC queue

void ResetLrWpan() {
    g_lrState.clear();
    g_lrQueued.clear();
}

void LrMacState(int ep, lrwpan::MacState, lrwpan::MacState now) { g_lrState[ep] = now; }
void LrEnqueue(int ep, Ptr<const Packet> p) { g_lrQueued[ep][p->GetUid()]++; }
void LrDequeue(int ep, Ptr<const Packet> p) {
    auto& q = g_lrQueued[ep];
    auto it = q.find(p->GetUid());
    if (it != q.end() && --it->second <= 0) q.erase(it);
}

// The MAC's one drop trace serves three causes: a full queue (the frame never entered it), CSMA-CA finding no
// clear channel (the MAC is still in its CSMA state), and no acknowledgement after the last retry.
void LrTxDrop(int ep, Ptr<const Packet> p) {
    std::string reason;
    if (!g_lrQueued[ep].count(p->GetUid())) reason = "queue_full";
    else if (g_lrState[ep] == lrwpan::MAC_CSMA) reason = "channel_access_failure";
    else reason = "no_ack";
    DropPacket(p, ep, reason, false);
}

void SixDrop(int ep, SixLowPanNetDevice::DropReason r, Ptr<const Packet> p, Ptr<SixLowPanNetDevice>, uint32_t) {
    std::string reason;
    switch (r) {
        case SixLowPanNetDevice::DROP_FRAGMENT_TIMEOUT: reason = "fragment_timeout"; break;
        case SixLowPanNetDevice::DROP_FRAGMENT_BUFFER_FULL: reason = "fragment_buffer_full"; break;
        default: reason = "decompression_failure"; break;
    }
    DropPacket(p, ep, reason, true);
}

int BuildLrWpan(uint32_t segment, std::vector<double> xyz, std::string loss, double rangeM, double txPowerDbm) {
    uint32_t n = (uint32_t)(xyz.size() / 3);
    NodeContainer nodes;
    nodes.Create(n);
    Ptr<SingleModelSpectrumChannel> channel = CreateObject<SingleModelSpectrumChannel>();
    channel->AddPropagationLossModel(MakeLoss(loss, 2.405e9, rangeM));  // channel 11
    channel->SetPropagationDelayModel(CreateObject<ConstantSpeedPropagationDelayModel>());
    lrwpan::LrWpanSpectrumValueHelper spectrum;
    NetDeviceContainer devs;
    uint16_t panId = (uint16_t)(1 + segment);
    Mac16Address coordShort;
    Mac64Address coordExt;
    for (uint32_t i = 0; i < n; ++i) {
        Ptr<Node> node = nodes.Get(i);
        Ptr<lrwpan::LrWpanNetDevice> dev = CreateObject<lrwpan::LrWpanNetDevice>();
        dev->SetChannel(channel);
        node->AddDevice(dev);
        dev->SetNode(node);
        dev->GetPhy()->SetMobility(Place(node, xyz[3 * i], xyz[3 * i + 1], xyz[3 * i + 2]));
        dev->GetPhy()->SetTxPowerSpectralDensity(spectrum.CreateTxPowerSpectralDensity(txPowerDbm, 11));
        // The PAN as LrWpanHelper::CreateAssociatedPan makes it: short address i + 1, the first node coordinator.
        uint8_t shortBuf[2] = {(uint8_t)((i + 1) >> 8), (uint8_t)((i + 1) & 0xff)};
        uint8_t extBuf[8] = {0, 0, 0, 0, 0, 0, (uint8_t)((i + 1) >> 8), (uint8_t)((i + 1) & 0xff)};
        Mac16Address a16;
        a16.CopyFrom(shortBuf);
        Mac64Address a64;
        a64.CopyFrom(extBuf);
        if (i == 0) { coordShort = a16; coordExt = a64; }
        dev->GetMac()->SetExtendedAddress(a64);
        dev->SetPanAssociation(panId, coordExt, coordShort, a16);
        g_stream += dev->AssignStreams(g_stream);
        devs.Add(dev);
    }
    SixLowPanHelper sixlowpan;
    NetDeviceContainer six = sixlowpan.Install(devs);
    g_stream += sixlowpan.AssignStreams(six, g_stream);
    InternetStackHelper internet;
    internet.SetIpv4StackInstall(false);
    internet.Install(nodes);
    g_stream += internet.AssignStreams(nodes, g_stream);
    Ipv6AddressHelper addresses;
    std::ostringstream prefix;
    prefix << "2001:db8:" << std::hex << (segment + 1) << "::";
    addresses.SetBase(Ipv6Address(prefix.str().c_str()), Ipv6Prefix(64));
    Ipv6InterfaceContainer ifs = addresses.Assign(six);
    // The segment's prefix as 6LoWPAN context 0, as a deployed PAN has it: global addresses compress (RFC 6282)
    // like link-local ones instead of travelling inline (32 bytes per frame).
    sixlowpan.AddContext(six, 0, Ipv6Prefix(prefix.str().c_str(), 64), Days(3650));
    RemoveQueueDiscs(six);
    // Static neighbour entries for every address of every other node (NeighborCacheHelper looks for the IPv6
    // interface on the 802.15.4 device, while it sits on the 6LoWPAN device above it).
    for (uint32_t i = 0; i < n; ++i) {
        Ptr<Ipv6L3Protocol> ip = nodes.Get(i)->GetObject<Ipv6L3Protocol>();
        Ptr<NdiscCache> cache = ip->GetInterface(ip->GetInterfaceForDevice(six.Get(i)))->GetNdiscCache();
        for (uint32_t j = 0; j < n; ++j) {
            if (i == j) continue;
            Ptr<Ipv6L3Protocol> other = nodes.Get(j)->GetObject<Ipv6L3Protocol>();
            Ptr<Ipv6Interface> iface = other->GetInterface(other->GetInterfaceForDevice(six.Get(j)));
            for (uint32_t k = 0; k < iface->GetNAddresses(); ++k) {
                Ipv6Address addr = iface->GetAddress(k).GetAddress();
                NdiscCache::Entry* entry = cache->Lookup(addr);
                if (!entry) entry = cache->Add(addr);
                entry->SetMacAddress(six.Get(j)->GetAddress());
                entry->MarkAutoGenerated();
            }
        }
    }
    int first = (int)g_eps.size();
    for (uint32_t i = 0; i < n; ++i) {
        int ep = AddEndpoint(nodes.Get(i), Inet6SocketAddress(ifs.GetAddress(i, 1), PORT), true);
        Ptr<lrwpan::LrWpanNetDevice> dev = DynamicCast<lrwpan::LrWpanNetDevice>(devs.Get(i));
        Ptr<lrwpan::LrWpanMac> mac = dev->GetMac();
        mac->TraceConnectWithoutContext("MacStateValue", MakeBoundCallback(&LrMacState, ep));
        mac->TraceConnectWithoutContext("MacTxEnqueue", MakeBoundCallback(&LrEnqueue, ep));
        mac->TraceConnectWithoutContext("MacTxDequeue", MakeBoundCallback(&LrDequeue, ep));
        mac->TraceConnectWithoutContext("MacTxDrop", MakeBoundCallback(&LrTxDrop, ep));
        six.Get(i)->TraceConnectWithoutContext("Drop", MakeBoundCallback(&SixDrop, ep));
    }
    return first;
}
}  // namespace cosimns
"""

WIFI = r"""
#include "ns3/wifi-helper.h"
#include "ns3/yans-wifi-helper.h"
#include "ns3/yans-wifi-channel.h"
#include "ns3/wifi-mac-helper.h"
#include "ns3/wifi-net-device.h"
#include "ns3/wifi-mac.h"
#include "ns3/wifi-mpdu.h"
#include "ns3/wifi-standards.h"
#include "ns3/ssid.h"

namespace cosimns {
void WifiMpduDrop(int ep, WifiMacDropReason r, Ptr<const WifiMpdu> mpdu) {
    std::string reason;
    switch (r) {
        case WIFI_MAC_DROP_FAILED_ENQUEUE: reason = "queue_full"; break;
        case WIFI_MAC_DROP_EXPIRED_LIFETIME: reason = "expired_lifetime"; break;
        case WIFI_MAC_DROP_REACHED_RETRY_LIMIT: reason = "retry_limit"; break;
        default: reason = "qos_old_packet"; break;
    }
    DropPacket(mpdu->GetPacket(), ep, reason, false);
}

WifiStandard StandardNamed(const std::string& name) {
    if (name == "WIFI_STANDARD_80211a") return WIFI_STANDARD_80211a;
    if (name == "WIFI_STANDARD_80211b") return WIFI_STANDARD_80211b;
    if (name == "WIFI_STANDARD_80211g") return WIFI_STANDARD_80211g;
    if (name == "WIFI_STANDARD_80211n") return WIFI_STANDARD_80211n;
    if (name == "WIFI_STANDARD_80211ac") return WIFI_STANDARD_80211ac;
    return WIFI_STANDARD_80211ax;
}

int BuildWifi(uint32_t segment, std::vector<double> xyz, std::string loss, double rangeM, double txPowerDbm,
              std::string standard, std::string band, std::string manager, std::string dataMode,
              std::string controlMode, bool infrastructure) {
    uint32_t n = (uint32_t)(xyz.size() / 3);
    NodeContainer nodes;
    nodes.Create(n);
    for (uint32_t i = 0; i < n; ++i) Place(nodes.Get(i), xyz[3 * i], xyz[3 * i + 1], xyz[3 * i + 2]);
    bool fiveGhz = band == "5GHz";
    Ptr<YansWifiChannel> channel = CreateObject<YansWifiChannel>();
    channel->SetPropagationLossModel(MakeLoss(loss, fiveGhz ? 5.18e9 : 2.412e9, rangeM));
    channel->SetPropagationDelayModel(CreateObject<ConstantSpeedPropagationDelayModel>());
    YansWifiPhyHelper phy;
    phy.SetChannel(channel);
    phy.Set("TxPowerStart", DoubleValue(txPowerDbm));
    phy.Set("TxPowerEnd", DoubleValue(txPowerDbm));
    WifiStandard wifiStandard = StandardNamed(standard);
    if (wifiStandard == WIFI_STANDARD_80211n) {
        phy.Set("ChannelSettings", StringValue(fiveGhz ? "{0, 20, BAND_5GHZ, 0}" : "{0, 20, BAND_2_4GHZ, 0}"));
    }
    WifiHelper wifi;
    wifi.SetStandard(wifiStandard);
    if (manager == "constant") {
        wifi.SetRemoteStationManager("ns3::ConstantRateWifiManager", "DataMode", StringValue(dataMode),
                                     "ControlMode", StringValue(controlMode));
    } else if (manager == "ideal") {
        wifi.SetRemoteStationManager("ns3::IdealWifiManager");
    } else if (wifiStandard == WIFI_STANDARD_80211a || wifiStandard == WIFI_STANDARD_80211b ||
               wifiStandard == WIFI_STANDARD_80211g) {
        wifi.SetRemoteStationManager("ns3::MinstrelWifiManager");
    } else {
        wifi.SetRemoteStationManager("ns3::MinstrelHtWifiManager");
    }
    WifiMacHelper mac;
    NetDeviceContainer devs;
    if (infrastructure) {
        // The first node is the access point; the stations associate through its beacons (no active probing).
        Ssid ssid("cosim-" + std::to_string(segment));
        mac.SetType("ns3::ApWifiMac", "Ssid", SsidValue(ssid));
        devs.Add(wifi.Install(phy, mac, nodes.Get(0)));
        mac.SetType("ns3::StaWifiMac", "Ssid", SsidValue(ssid), "ActiveProbing", BooleanValue(false));
        for (uint32_t i = 1; i < n; ++i) devs.Add(wifi.Install(phy, mac, nodes.Get(i)));
    } else {
        mac.SetType("ns3::AdhocWifiMac");
        devs = wifi.Install(phy, mac, nodes);
    }
    g_stream += wifi.AssignStreams(devs, g_stream);
    int first = Ipv4Up(nodes, devs, segment);
    for (uint32_t i = 0; i < n; ++i) {
        int ep = first + (int)i;
        Ptr<WifiMac> wifiMac = DynamicCast<WifiNetDevice>(devs.Get(i))->GetMac();
        wifiMac->TraceConnectWithoutContext("DroppedMpdu", MakeBoundCallback(&WifiMpduDrop, ep));
        // Before association, a station's MAC drops what it is given (an access point, what is meant for a
        // station that is not associated).
        wifiMac->TraceConnectWithoutContext("MacTxDrop", MakeBoundCallback(&TxDropTrace, ep, std::string("not_associated")));
    }
    return first;
}
}  // namespace cosimns
"""
