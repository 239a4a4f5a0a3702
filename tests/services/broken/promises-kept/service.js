// Broken on purpose (promises-kept), on the Node SDK: its heartbeat reports how many ADVANCEs it has seen, so what
// it emits depends on how often it is advanced, and skipping windows changes its outputs.
"use strict";
const { Service, run } = require("cosim-service");

class CountsWindows extends Service {
  constructor() {
    super();
    this.windows = 0;
  }

  advance(current, target) {
    this.windows += 1;
    const out = [];
    for (let t = (Math.floor(current / 100000) + 1) * 100000; t <= target; t += 100000) {
      out.push({ type: "heartbeat", time_us: t, data: { windows: this.windows } });
    }
    return out;
  }

  wakeup(target) {
    return (Math.floor(target / 100000) + 1) * 100000;
  }
}

run(new CountsWindows());
