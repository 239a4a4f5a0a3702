"use strict";
/**
 * cosim-service: write a cosim service in Node.js (no dependencies).
 *
 * A cosim service is driven in virtual time over JSON lines on stdin/stdout (docs/protocol.md, the
 * language-neutral contract). This module owns the protocol; a service extends `Service` and overrides hooks:
 *
 *   const { Service, run } = require("cosim-service");
 *   class Alarm extends Service {
 *     init(message) { this.threshold = this.config.threshold ?? 1; }      // may return READY's `info`
 *     advance(current, target, events) {                                    // the window (current, target]
 *       return events.filter((e) => e.data.value > this.threshold)
 *                    .map((e) => ({ type: "alarm", time_us: e.time_us, data: e.data }));
 *     }
 *   }
 *   run(new Alarm());
 *
 * Optional hooks, each declaring what READY announces when it is defined on the subclass:
 *   wakeup(target) -> next time (> target) the service emits on its own, or null   => next_event (promises)
 *   configure(changes, message), throwing to refuse a change                         => capability "configure"
 *     (with `this.configKeys = [...]` unknown keys are refused before the hook runs, and the hook is optional)
 *   snapshot() -> JSON state, restore(state)                                         => capability "snapshot"
 *   shutdown()                                                                       (flush what you owe)
 * `this.nextEvent = true` declares next-event advance for a service that only reacts to input (no wakeup).
 * `this.capabilities = [...]` adds free-form capability names. Hooks may be async (return a Promise).
 *
 * Outputs may leave out `time_us` (stamped at the window end) or be stamped after the window: such an output is
 * held and sent in the DONE of the window that contains it (a modelled processing delay), and folded into the
 * promise (`next_us`). console.log and process.stdout.write go to stderr once `run` starts: stdout carries
 * protocol lines only.
 */

const { TextDecoder } = require("util");

const PROTOCOL_VERSION = 1;

class ProtocolError extends Error {
  /** A request answered with ERROR: a code of docs/protocol.md §7.1, one line of detail, fatal or not. */
  constructor(error, detail, fatal = false) {
    super(`${error}: ${detail}`);
    this.error = error;
    this.detail = detail;
    this.fatal = fatal;
  }
}

// -- canonical JSON: the bytes cosim's Python encoder writes -------------------------------------------------
// json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False): keys sorted by code
// point, no spaces, non-ASCII text raw, NaN/Infinity refused. Numbers: a safe integer is written as an integer;
// any other number as Python's repr of a float (shortest round-trip digits; exponent form below 1e-4 and from
// 1e16, "1e-05", "1e+16"; an integral value gets ".0"). JavaScript has one number type, so an integral float
// cannot be told from an integer: wrap it, `float(2)`, to get Python's "2.0"; a BigInt is written as an integer.

class Float {
  /** A number always written as a float (Python's `2.0`, not `2`): see `float(value)`. */
  constructor(value) {
    if (typeof value !== "number") throw new TypeError(`float() takes a number, got ${typeof value}`);
    this.value = value;
  }

  toJSON() {
    return this.value;
  }
}

/** `value` encoded as a float even when integral (Python's `2.0`). */
function float(value) {
  return new Float(value);
}

/** Python's repr() of a finite double. */
function formatFloat(x) {
  if (!Number.isFinite(x)) throw new TypeError(`${x} is not JSON (NaN and Infinity are refused)`);
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  let text = String(Math.abs(x)); // shortest round-trip digits, the closest when several (as Python's)
  let exponent = 0;
  const e = text.indexOf("e");
  if (e >= 0) {
    exponent = Number(text.slice(e + 1));
    text = text.slice(0, e);
  }
  const dot = text.indexOf(".");
  const whole = dot < 0 ? text : text.slice(0, dot);
  let digits = whole + (dot < 0 ? "" : text.slice(dot + 1));
  let point = whole.length + exponent; // x = 0.<digits> * 10**point
  const leading = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(leading).replace(/0+$/, "");
  point -= leading;
  let out;
  if (point <= -4 || point > 16) {
    const power = point - 1;
    const mantissa = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    out = `${mantissa}e${power < 0 ? "-" : "+"}${String(Math.abs(power)).padStart(2, "0")}`;
  } else if (point <= 0) {
    out = `0.${"0".repeat(-point)}${digits}`;
  } else if (point >= digits.length) {
    out = `${digits}${"0".repeat(point - digits.length)}.0`;
  } else {
    out = `${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  return x < 0 ? `-${out}` : out;
}

function formatNumber(x) {
  if (Number.isSafeInteger(x)) return String(x); // (-0 is written "0", as Python's int)
  return formatFloat(x);
}

const SURROGATE = /[\ud800-\udfff]/;

/** Python's string order (code points); JavaScript's `<` compares UTF-16 units, which differs for astral text. */
function compareKeys(a, b) {
  if (!SURROGATE.test(a) && !SURROGATE.test(b)) return a < b ? -1 : a > b ? 1 : 0;
  const left = Array.from(a, (c) => c.codePointAt(0));
  const right = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(left.length, right.length); i += 1) {
    if (left[i] !== right[i]) return left[i] - right[i];
  }
  return left.length - right.length;
}

function skipped(value) {
  return value === undefined || typeof value === "function" || typeof value === "symbol";
}

function encodeValue(value, parts, seen) {
  switch (typeof value) {
    case "string":
      parts.push(JSON.stringify(value)); // the same escapes as Python's (ensure_ascii=False)
      return;
    case "number":
      parts.push(formatNumber(value));
      return;
    case "bigint":
      parts.push(value.toString());
      return;
    case "boolean":
      parts.push(value ? "true" : "false");
      return;
    case "object":
      break;
    default:
      throw new TypeError(`a ${typeof value} is not JSON`);
  }
  if (value === null) {
    parts.push("null");
    return;
  }
  if (value instanceof Float) {
    parts.push(formatFloat(value.value));
    return;
  }
  if (typeof value.toJSON === "function") {
    encodeValue(value.toJSON(), parts, seen);
    return;
  }
  if (value instanceof Map || value instanceof Set) {
    throw new TypeError(`a ${value.constructor.name} is not JSON: convert it (Object.fromEntries, Array.from)`);
  }
  if (seen.has(value)) throw new TypeError("a circular structure is not JSON");
  seen.add(value);
  if (Array.isArray(value)) {
    parts.push("[");
    value.forEach((item, index) => {
      if (index) parts.push(",");
      encodeValue(skipped(item) ? null : item, parts, seen);
    });
    parts.push("]");
  } else {
    const keys = Object.keys(value).filter((key) => !skipped(value[key])).sort(compareKeys);
    parts.push("{");
    keys.forEach((key, index) => {
      if (index) parts.push(",");
      parts.push(JSON.stringify(key), ":");
      encodeValue(value[key], parts, seen);
    });
    parts.push("}");
  }
  seen.delete(value);
}

/** One canonical JSON line (the exact bytes cosim writes), newline-terminated. Throws on NaN/Infinity. */
function encode(message) {
  const parts = [];
  encodeValue(message, parts, new Set());
  return `${parts.join("")}\n`;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** One line (a Buffer or a string) decoded: strict UTF-8, then JSON. Throws ProtocolError bad_json. */
function decode(line) {
  let text = line;
  if (typeof line !== "string") {
    try {
      text = UTF8.decode(line);
    } catch (err) {
      throw new ProtocolError("bad_json", "line is not UTF-8");
    }
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ProtocolError("bad_json", `line is not JSON (${err.message})`);
  }
}

// -- the protocol -----------------------------------------------------------------------------------------------

const isInt = (value) => Number.isInteger(value);
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

function describe(err) {
  if (!(err instanceof Error)) return String(err);
  const where = (err.stack || "").split("\n").find((line) => /^\s+at /.test(line));
  return `${err.name}: ${err.message}${where ? ` (${where.trim()})` : ""}`;
}

/** The base class of a service: override `advance` (and the other hooks); see the module's comment. */
class Service {
  constructor() {
    this.config = {}; // INIT's config, with every CONFIGURE merged in
    this.endpoints = {}; // {node_id: {host, port}} of infrastructure nodes (null: down)
    this.nodeId = null;
    this.seed = null; // the node's seed (< 2**53): seed every random generator from it
    this.now = 0; // virtual time reached (us): the only clock a service has
    this.capabilities = [];
  }

  /** INIT: set up (config, seed and endpoints are already on `this`); may return READY's `info` object. */
  init(message) {}

  /** The window (current, target]: `events` are the inputs in it, in time order. Return the outputs. */
  advance(current, target, events, message) {
    return [];
  }

  /** SHUTDOWN (or end of input): flush what the service owes the outside world. */
  shutdown() {}
}

/** The protocol state around one Service: one request in, one reply (or null) out. */
class Session {
  constructor(service) {
    this.service = service;
    this.initialized = false;
    this.held = []; // outputs stamped after the window they were produced in
    this.members = [];
    this.exitCode = null; // set when the loop must stop
  }

  get nextEvent() {
    return Boolean(this.service.nextEvent) || typeof this.service.wakeup === "function";
  }

  get configurable() {
    return typeof this.service.configure === "function" || Array.isArray(this.service.configKeys);
  }

  get snapshots() {
    return typeof this.service.snapshot === "function" && typeof this.service.restore === "function";
  }

  capabilities() {
    const names = new Set(this.service.capabilities || []);
    if (this.configurable) names.add("configure");
    if (this.snapshots) names.add("snapshot");
    return [...names].sort(compareKeys);
  }

  /** The reply to one raw line (Buffer or string), or null (SHUTDOWN, a blank line). */
  async handleLine(line) {
    try {
      return await this.handle(decode(line));
    } catch (err) {
      if (err instanceof ProtocolError) return this.error(err);
      throw err;
    }
  }

  async handle(message) {
    try {
      if (!isObject(message)) {
        throw new ProtocolError("bad_message", `expected a JSON object, got ${Array.isArray(message) ? "array" : typeof message}`);
      }
      switch (message.type) {
        case "INIT":
          return await this.init(message);
        case "ADVANCE":
          return await this.advance(message);
        case "CONFIGURE":
          return await this.configure(message);
        case "SNAPSHOT":
          return await this.snapshot(message);
        case "RESTORE":
          return await this.restore(message);
        case "SHUTDOWN":
          await this.shutdown();
          return null;
        case undefined:
          throw new ProtocolError("bad_message", "message has no 'type' field");
        default:
          throw new ProtocolError("unknown_type", `unknown message type ${JSON.stringify(message.type)}; expected ` +
            "INIT, ADVANCE, CONFIGURE, SNAPSHOT, RESTORE or SHUTDOWN");
      }
    } catch (err) {
      if (err instanceof ProtocolError) return this.error(err);
      throw err;
    }
  }

  async call(code, fatal, hook, ...args) {
    try {
      return await hook.apply(this.service, args);
    } catch (err) {
      throw new ProtocolError(code, describe(err), fatal);
    }
  }

  async init(message) {
    if (this.initialized) throw new ProtocolError("already_initialized", "INIT received twice");
    if (!("protocol" in message)) throw new ProtocolError("bad_message", "INIT has no 'protocol' field");
    if (message.protocol !== PROTOCOL_VERSION) {
      throw new ProtocolError("protocol_version", `coordinator speaks protocol ${JSON.stringify(message.protocol)}, ` +
        `this service speaks ${PROTOCOL_VERSION}`, true);
    }
    const time = message.time_us === undefined ? 0 : message.time_us;
    const restart = message.restart;
    if (restart === undefined && time !== 0) {
      throw new ProtocolError("bad_message", `INIT time_us must be 0, got ${JSON.stringify(time)}`);
    }
    if (restart !== undefined && !(isInt(restart) && restart >= 1 && isInt(time) && time >= 0)) {
      throw new ProtocolError("bad_message", "INIT of a restart needs restart >= 1 and time_us >= 0 (integers)");
    }
    const config = message.config === undefined ? {} : message.config;
    if (!isObject(config)) throw new ProtocolError("bad_message", "INIT config must be an object");
    if (message.endpoints !== undefined && !isObject(message.endpoints)) {
      throw new ProtocolError("bad_message", "INIT endpoints must be an object");
    }
    const service = this.service;
    service.nodeId = message.node_id === undefined ? null : message.node_id;
    service.seed = message.seed === undefined ? null : message.seed;
    service.config = { ...config };
    service.endpoints = { ...(message.endpoints || {}) };
    service.now = time;
    const info = await this.call("init_failed", true, service.init, message);
    this.initialized = true;
    const ready = { type: "READY", protocol: PROTOCOL_VERSION, time_us: 0, capabilities: this.capabilities() };
    if (this.nextEvent) {
      ready.next_event = true;
      const promise = await this.promise(time);
      if (promise !== null) ready.next_us = promise;
    }
    if (isObject(info) && Object.keys(info).length) ready.info = info;
    return ready;
  }

  async advance(message) {
    if (!this.initialized) throw new ProtocolError("not_initialized", "ADVANCE received before INIT");
    const service = this.service;
    const current = service.now;
    const target = message.time_us;
    if (!isInt(target)) {
      throw new ProtocolError("bad_message", `ADVANCE time_us must be an integer, got ${JSON.stringify(target)}`);
    }
    if (target < current) {
      throw new ProtocolError("time_backwards", `ADVANCE to ${target} us but the service is already at ${current} us`);
    }
    const events = message.events === undefined ? [] : message.events;
    if (!Array.isArray(events)) throw new ProtocolError("bad_message", "ADVANCE events must be an array");
    events.forEach((event, index) => {
      if (!isObject(event) || !isInt(event.time_us)) {
        throw new ProtocolError("bad_event", `events[${index}] must be an object with an integer time_us`);
      }
      if (!(current < event.time_us && event.time_us <= target)) {
        throw new ProtocolError("event_outside_window",
          `events[${index}] at ${event.time_us} us lies outside the window (${current}, ${target}]`);
      }
    });
    if (Array.isArray(message.members)) this.members = message.members;
    const ordered = events.map((event, index) => [event, index])
      .sort((a, b) => a[0].time_us - b[0].time_us || a[1] - b[1]).map((pair) => pair[0]);
    const produced = await this.call("callback_failed", true, service.advance, current, target, ordered, message);
    const stamped = this.stamp(produced || [], current, target);
    const all = this.held.length ? this.held.concat(stamped) : stamped;
    const outputs = all.filter((event) => event.time_us <= target);
    this.held = all.filter((event) => event.time_us > target);
    service.now = target;
    const done = { type: "DONE", time_us: target, events: outputs };
    if (this.nextEvent) {
      const promise = await this.promise(target);
      if (promise !== null) done.next_us = promise;
    }
    return done;
  }

  stamp(produced, current, target) {
    if (!Array.isArray(produced)) {
      throw new ProtocolError("bad_output", "advance() must return an array of events", true);
    }
    return produced.map((event, index) => {
      if (!isObject(event) || typeof event.type !== "string") {
        throw new ProtocolError("bad_output", `output events[${index}] must be an object with a string 'type'`, true);
      }
      const copy = { ...event };
      if (copy.time_us === undefined) copy.time_us = target;
      if (!isInt(copy.time_us) || copy.time_us <= current) {
        throw new ProtocolError("bad_output", `output events[${index}] stamped at ${JSON.stringify(copy.time_us)} us, ` +
          `not after the window start ${current} us`, true);
      }
      return copy;
    });
  }

  /** The earliest time after `target` at which the service emits on its own (a held output or its wakeup). */
  async promise(target) {
    const times = this.held.map((event) => event.time_us);
    if (typeof this.service.wakeup === "function") {
      const wake = await this.call("callback_failed", true, this.service.wakeup, target);
      if (wake !== null && wake !== undefined) {
        if (!isInt(wake) || wake <= target) {
          throw new ProtocolError("bad_wakeup", `wake-up time ${JSON.stringify(wake)} is not an integer after the ` +
            `window end ${target} us`, true);
        }
        times.push(wake);
      }
    }
    return times.length ? Math.min(...times) : null;
  }

  async configure(message) {
    if (!this.initialized) throw new ProtocolError("not_initialized", "CONFIGURE received before INIT");
    if (!this.configurable) {
      throw new ProtocolError("unsupported", "this service takes no CONFIGURE (it did not declare 'configure')");
    }
    const service = this.service;
    const time = message.time_us;
    if (!isInt(time) || time < service.now) {
      throw new ProtocolError("bad_message", "CONFIGURE time_us must be an integer not before the service's " +
        `current time ${service.now} us, got ${JSON.stringify(time)}`);
    }
    for (const name of ["config", "endpoints"]) {
      if (message[name] !== undefined && !isObject(message[name])) {
        throw new ProtocolError("bad_message", `CONFIGURE ${name} must be an object`);
      }
    }
    const changes = message.config || {};
    if (Array.isArray(service.configKeys)) {
      const unknown = Object.keys(changes).filter((key) => !service.configKeys.includes(key)).sort();
      if (unknown.length) {
        throw new ProtocolError("configure_failed", `unknown config key(s) ${unknown.join(", ")}; ` +
          `this service takes ${service.configKeys.join(", ") || "none"}`);
      }
    }
    if (typeof service.configure === "function") await this.call("configure_failed", false, service.configure, changes, message);
    Object.assign(service.config, changes);
    Object.assign(service.endpoints, message.endpoints || {});
    service.now = time; // it had nothing to do in between (else it would have been advanced)
    const configured = { type: "CONFIGURED", time_us: time };
    if (this.nextEvent) {
      const promise = await this.promise(time);
      if (promise !== null) configured.next_us = promise;
    }
    return configured;
  }

  checkSnapshots(kind) {
    if (!this.initialized) throw new ProtocolError("not_initialized", `${kind} received before INIT`);
    if (!this.snapshots) {
      throw new ProtocolError("unsupported", `this service takes no ${kind} (it did not declare 'snapshot')`);
    }
  }

  async snapshot(message) {
    this.checkSnapshots("SNAPSHOT");
    const service = this.service;
    if (message.time_us !== service.now) {
      throw new ProtocolError("bad_message", `SNAPSHOT time_us must be the service's current time ${service.now} us, ` +
        `got ${JSON.stringify(message.time_us)}`);
    }
    const own = await this.call("snapshot_failed", false, service.snapshot);
    const state = { held: this.held, members: this.members, config: service.config, endpoints: service.endpoints,
      service: own === undefined ? null : own };
    try {
      encode(state); // JSON-able, without NaN: checked here, so that the failure names the hook
    } catch (err) {
      throw new ProtocolError("snapshot_failed", describe(err));
    }
    return { type: "SNAPSHOT_STATE", time_us: message.time_us, state };
  }

  async restore(message) {
    this.checkSnapshots("RESTORE");
    const { time_us: time, state } = message;
    if (!isInt(time) || time < 0 || !isObject(state)) {
      throw new ProtocolError("bad_message", "RESTORE needs an integer time_us >= 0 and a state object");
    }
    const service = this.service;
    await this.call("restore_failed", true, service.restore, state.service);
    this.held = Array.isArray(state.held) ? state.held : [];
    this.members = Array.isArray(state.members) ? state.members : [];
    if (isObject(state.config)) service.config = { ...state.config };
    if (isObject(state.endpoints)) service.endpoints = { ...state.endpoints };
    service.now = time;
    return { type: "RESTORED", time_us: time };
  }

  async shutdown() {
    if (this.held.length) {
      console.error(`cosim-service: ${this.held.length} output event(s) stamped after the last window were not delivered`);
    }
    await this.service.shutdown();
    this.exitCode = 0;
  }

  error(err) {
    console.error(`cosim-service: ${err.error}: ${err.detail}`);
    if (err.fatal) this.exitCode = 1;
    return { type: "ERROR", error: err.error, detail: err.detail, fatal: err.fatal };
  }

  /** A reply as its line; an output that is not JSON (NaN, a cycle) becomes a fatal bad_output instead. */
  format(reply) {
    try {
      return encode(reply);
    } catch (err) {
      return encode(this.error(new ProtocolError("bad_output", `the reply is not JSON: ${err.message}`, true)));
    }
  }
}

/** Keep stdout for protocol lines: console.* and stray process.stdout.write calls go to stderr. Returns the
 * function that writes to the real stdout. */
function protectStdout() {
  const stdout = process.stdout;
  const write = stdout.write.bind(stdout);
  stdout.write = (...args) => process.stderr.write(...args);
  const toStderr = new console.Console({ stdout: process.stderr, stderr: process.stderr });
  for (const name of Object.keys(toStderr)) {
    if (typeof toStderr[name] === "function") console[name] = toStderr[name].bind(toStderr);
  }
  return { write, stream: stdout };
}

/**
 * Serve `service` on stdin/stdout until SHUTDOWN, a fatal error or end of input, then exit (0, or 1 after a
 * fatal ERROR). `options` (for tests): `input` (a Readable), `write(text)`, `exit(code)`.
 */
function run(service, options = {}) {
  if (!(service instanceof Service)) throw new TypeError("run() takes an instance of a Service subclass");
  let write = options.write;
  let exit = options.exit;
  if (!write) {
    const out = protectStdout();
    write = out.write;
    exit = exit || ((code) => {
      if (out.stream.writableLength) out.stream.once("drain", () => process.exit(code));
      else process.exit(code);
    });
  }
  exit = exit || ((code) => process.exit(code));
  const input = options.input || process.stdin;
  const session = new Session(service);
  const queue = [];
  let pending = [];
  let busy = false;
  let stopped = false;

  const stop = (code) => {
    stopped = true;
    input.pause();
    exit(code);
  };

  const pump = async () => {
    if (busy) return;
    busy = true;
    try {
      while (queue.length && !stopped) {
        const line = queue.shift();
        if (line === null) { // end of input: as SHUTDOWN
          console.error("cosim-service: stdin closed without SHUTDOWN; exiting");
          await session.shutdown();
          stop(0);
          return;
        }
        if (!line.toString("latin1").trim()) continue;
        const reply = await session.handleLine(line);
        if (reply !== null) write(session.format(reply));
        if (session.exitCode !== null) {
          stop(session.exitCode);
          return;
        }
      }
    } catch (err) { // a bug of this module or an exception thrown outside a hook
      console.error(err && err.stack ? err.stack : String(err));
      stop(1);
    } finally {
      busy = false;
    }
  };

  input.on("data", (chunk) => {
    const data = typeof chunk === "string" ? Buffer.from(chunk, "utf-8") : chunk;
    let start = 0;
    for (let newline = data.indexOf(10); newline >= 0; newline = data.indexOf(10, start)) {
      pending.push(data.subarray(start, newline));
      queue.push(pending.length === 1 ? pending[0] : Buffer.concat(pending));
      pending = [];
      start = newline + 1;
    }
    if (start < data.length) pending.push(data.subarray(start));
    pump();
  });
  input.on("end", () => {
    if (pending.length) queue.push(Buffer.concat(pending));
    pending = [];
    queue.push(null);
    pump();
  });
  return session;
}

module.exports = {
  PROTOCOL_VERSION,
  ProtocolError,
  Service,
  Session,
  run,
  encode,
  decode,
  float,
  Float,
  formatFloat,
};
