// {{name}}: a cosim service in Node.js, on the cosim-service SDK (docs/protocol.md is the contract it speaks).
//
// It raises an `alarm` for every `reading` event whose data.value is above the config's `threshold` (default 1.0),
// and emits a `heartbeat` every 250 ms of virtual time. Its clock is the protocol's `time_us` only: no timers, no
// Date.now(), no sleeping; a heartbeat is a wake-up it promises (next-event advance), so a run skips the windows
// in between. The threshold can be changed during a run (the schedule's reconfigure), and checkpoints carry its
// state. Logs go to stderr (console.log is redirected there): stdout carries protocol lines only.
"use strict";

const { Service, run } = require("cosim-service");

const HEARTBEAT_US = 250000; // 250 ms of virtual time

class Threshold extends Service {
  constructor() {
    super();
    this.capabilities = ["{{name}}"];
    this.configKeys = ["threshold"]; // CONFIGURE of any other key is refused
    this.alarms = 0; // alarms raised so far
  }

  init(message) {
    this.checkThreshold(this.config.threshold);
    console.log(`{{name}}: node ${this.nodeId} starts with threshold ${this.threshold()}`);
  }

  threshold() {
    return this.config.threshold === undefined ? 1.0 : this.config.threshold;
  }

  checkThreshold(value) {
    if (value !== undefined && typeof value !== "number") {
      throw new Error(`threshold must be a number, got ${JSON.stringify(value)}`);
    }
  }

  // Everything that happened in the window (current, target]: `events` are its inputs, in time order.
  advance(current, target, events) {
    const out = [];
    for (const event of events) {
      const value = event.type === "reading" && event.data ? event.data.value : undefined;
      if (typeof value === "number" && value > this.threshold()) {
        this.alarms += 1;
        out.push({ type: "alarm", time_us: event.time_us,
          data: { from: event.source, value, threshold: this.threshold(), count: this.alarms } });
      }
    }
    for (let t = (Math.floor(current / HEARTBEAT_US) + 1) * HEARTBEAT_US; t <= target; t += HEARTBEAT_US) {
      out.push({ type: "heartbeat", time_us: t, data: { node: this.nodeId, beat: t / HEARTBEAT_US } });
    }
    return out;
  }

  // The promise: the next time after `target` at which it emits on its own (its next heartbeat).
  wakeup(target) {
    return (Math.floor(target / HEARTBEAT_US) + 1) * HEARTBEAT_US;
  }

  // A change during the run; throwing refuses it (the run then fails, naming the key).
  configure(changes) {
    this.checkThreshold(changes.threshold);
  }

  snapshot() {
    return { alarms: this.alarms };
  }

  restore(state) {
    this.alarms = state.alarms;
  }
}

run(new Threshold());
