// {{name}}: an alarm for every reading over a threshold, and a heartbeat every 250 ms of virtual time.
//
// A cosim service in Node.js on the cosim-service SDK: the coordinator drives it over stdin/stdout in virtual time
// (docs/protocol.md is the contract the SDK speaks).
//
// Input:   `reading` events, data {"value": number} (e.g. from a sensor with `model: uniform`).
// Output:  `alarm` at the reading's time, data {value, threshold, from}, for each reading over the threshold;
//          `heartbeat` every `heartbeat_us`, data {beat: n, alarms: alarms so far}.
// Config:  `threshold` (0.9) and `heartbeat_us` (250000; 0: no heartbeat), both reconfigurable during a run.
//
// Its only clock is the protocol's time: no timers, no Date.now(), no sleeping. Next-event advance: `wakeup` tells
// the coordinator when the next heartbeat is due, so the windows in between are skipped (the trace is the same as
// when stepping every quantum). Checkpoints: `snapshot`/`restore`. console.log goes to stderr (the SDK redirects
// it): stdout carries the protocol.
"use strict";

const { Service, run } = require("cosim-service");

const KEYS = ["threshold", "heartbeat_us"];

function check(config) {
  const threshold = config.threshold === undefined ? 0.9 : config.threshold;
  if (typeof threshold !== "number") throw new Error(`threshold must be a number, got ${JSON.stringify(threshold)}`);
  const heartbeat = config.heartbeat_us === undefined ? 250000 : config.heartbeat_us;
  if (!Number.isInteger(heartbeat) || heartbeat < 0) {
    throw new Error(`heartbeat_us must be an integer >= 0 (0: no heartbeat), got ${JSON.stringify(heartbeat)}`);
  }
}

class ThresholdAlarm extends Service {
  constructor() {
    super();
    this.capabilities = ["alarm"];
    this.configKeys = KEYS; // any other key is refused at a reconfigure
    this.alarms = 0; // the state a checkpoint carries (config is carried by the SDK)
    this.beats = 0;
  }

  init() {
    const unknown = Object.keys(this.config).filter((key) => !KEYS.includes(key)).sort();
    if (unknown.length) throw new Error(`unknown config keys ${unknown.join(", ")}; {{name}} takes ${KEYS.join(", ")}`);
    check(this.config);
  }

  configure(changes) {
    check(changes); // check everything before anything changes: the SDK merges the changes afterwards
    console.log(`{{name}}: reconfigured at ${this.now} us: ${JSON.stringify(changes)}`);
  }

  period() {
    return this.config.heartbeat_us === undefined ? 250000 : this.config.heartbeat_us;
  }

  // The next heartbeat after `after` (null: no heartbeat): the promise that lets the coordinator skip windows.
  wakeup(after) {
    const period = this.period();
    return period ? (Math.floor(after / period) + 1) * period : null;
  }

  // Everything that happened in the window (current, target], however long it is; `events` in time order.
  advance(current, target, events) {
    const threshold = this.config.threshold === undefined ? 0.9 : this.config.threshold;
    const out = [];
    for (const event of events) {
      const value = event.data ? event.data.value : undefined;
      if (event.type === "reading" && typeof value === "number" && value > threshold) {
        this.alarms += 1;
        out.push({ type: "alarm", time_us: event.time_us, data: { value, threshold, from: event.source } });
      }
    }
    const period = this.period();
    if (period) {
      for (let beat = (Math.floor(current / period) + 1) * period; beat <= target; beat += period) {
        this.beats += 1;
        out.push({ type: "heartbeat", time_us: beat, data: { beat: this.beats, alarms: this.alarms } });
      }
    }
    return out;
  }

  snapshot() {
    return { alarms: this.alarms, beats: this.beats };
  }

  restore(state) {
    this.alarms = state.alarms;
    this.beats = state.beats;
  }
}

run(new ThresholdAlarm());
