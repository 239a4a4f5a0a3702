// Broken on purpose (snapshot-restore), on the Node SDK: its snapshot leaves out its counter, so a restored
// process starts counting again from zero.
"use strict";
const { Service, run } = require("cosim-service");

class Forgets extends Service {
  constructor() {
    super();
    this.count = 0;
  }

  advance(current, target, events) {
    return events.map((event) => {
      this.count += 1;
      return { type: "counted", time_us: event.time_us, data: { count: this.count } };
    });
  }

  snapshot() {
    return {}; // the bug: the counter is not part of the state
  }

  restore(state) {}
}

run(new Forgets());
