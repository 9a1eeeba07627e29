// One call on /ws, the brief's protocol: a persona_config, then the user's audio as 16-bit PCM at
// 24 kHz (80 ms frames straight from the capture worklet) and the agent's back the same way,
// with JSON events (warming, ready, text, error, end, pong).
//
// States, as the page shows them: connecting (socket and microphone opening, the persona's
// prompt running) -> warming (the server loads the model) -> live -> ended (why: idle, time
// limit, server stopping, hung up) | refused (the server is full: when to retry) | error.
//
// Latency stays bounded on both sides: a frame the socket has not sent within 320 ms is dropped,
// not queued (a stalled network), and playback goes through the jitter buffer. Round trip: a
// ping every second, answered by the server in turn with the agent's audio, so it is the delay
// the agent's voice sees on the network and in the server's queue.

import { FRAME, newContext, openMicrophone, startGraph } from "./audio.js";

const PING_EVERY_MS = 1000;
const RTT_WINDOW = 5; // the round trip shown: the median of the last pongs
const SEND_BACKLOG_BYTES = 4 * 2 * FRAME; // 320 ms of audio the socket has not sent yet
const HANG_UP_GRACE_MS = 3000; // the server's end message and close, after ours
const GOING_AWAY = new Set([1001, 1012]); // the server stops (uvicorn closes with 1012)
const TRY_LATER = 1013;
const SERVER_FAILURES = new Set(["error", "bad-request", "protocol-error"]);

export class Call {
  /** handlers: onState(state, detail), onText(text), onNotice({kind, message}), onStats(stats). */
  constructor(handlers) {
    this.handlers = handlers;
    this.state = "idle";
    this.stats = {
      sent: 0, // samples of the user's audio sent, at 24 kHz
      sendDropped: 0, // samples not sent: the network did not keep up
      received: 0, // samples of the agent's audio received
      played: 0, // samples of it played (the playback worklet's count)
      underruns: 0,
      dropped: 0, // samples of it dropped as late by the jitter buffer
      bufferedMs: 0,
      inRms: 0,
      inPeak: 0,
      outRms: 0,
      outPeak: 0,
      rttMs: null,
      textPieces: 0,
    };
    this.rtts = [];
    this.pings = new Map();
    this.nextPing = 1;
    this.finished = false;
    this.opened = false;
  }

  /**
   * Start: call from the user's click or key press (the AudioContext is made before any await, so
   * browsers let it play). url: the /ws URL (with ?token= when the server needs one).
   */
  start(url, config) {
    this.context = newContext();
    this.context.resume().catch(() => {});
    this.setState("connecting");
    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => {
      this.opened = true;
      this.socket.send(JSON.stringify({ type: "persona_config", audio: "pcm_s16le", sample_rate: 24000, ...config }));
    };
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => this.closed(event.code, event.reason);
    this.openAudio();
  }

  async openAudio() {
    let stream;
    try {
      stream = await openMicrophone();
    } catch (error) {
      this.fail(microphoneProblem(error));
      return;
    }
    if (this.finished) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    try {
      this.graph = await startGraph(this.context, stream, {
        onFrame: (frame) => this.captured(frame),
        onPlayback: (report) => this.played(report),
      });
    } catch (error) {
      for (const track of stream.getTracks()) track.stop();
      this.fail(`the browser could not start its audio (${error.name}: ${error.message})`);
      return;
    }
    this.context = this.graph.context;
    if (this.finished) {
      this.graph.close();
      return;
    }
    this.context.onstatechange = () => this.checkSound();
    this.checkSound();
  }

  /** A context the browser keeps suspended (no click yet, e.g. opened with ?connect=1) needs one. */
  checkSound() {
    if (this.finished || !this.context) return;
    const suspended = this.context.state === "suspended";
    this.handlers.onNotice({ kind: suspended ? "suspended" : "sound-on" });
  }

  /** From a click or key press: let the suspended context run. */
  resume() {
    if (this.context && this.context.state === "suspended") this.context.resume().catch(() => {});
  }

  /** The user hangs up: the server ends the session and tells why; we close if it does not. */
  hangUp() {
    if (this.finished) return;
    this.hangingUp = true;
    if (this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "end" }));
      this.hangUpTimer = setTimeout(() => this.socket.close(1000, "hung up"), HANG_UP_GRACE_MS);
    } else {
      this.socket.close();
      this.finish({ state: "ended", reason: "client-ended" });
    }
  }

  // -- from the worklets ----------------------------------------------------------------------

  captured({ pcm, rms, peak }) {
    this.stats.inRms = rms;
    this.stats.inPeak = peak;
    if (this.state !== "live" || this.socket.readyState !== WebSocket.OPEN) return;
    if (this.socket.bufferedAmount > SEND_BACKLOG_BYTES) {
      this.stats.sendDropped += FRAME;
      return;
    }
    this.socket.send(pcm);
    this.stats.sent += FRAME;
  }

  played(report) {
    this.stats.played = report.played;
    this.stats.underruns = report.underruns;
    this.stats.dropped = report.dropped;
    this.stats.bufferedMs = report.bufferedMs;
    this.stats.outRms = report.rms;
    this.stats.outPeak = report.peak;
    this.handlers.onStats(this.stats);
  }

  // -- from the server ------------------------------------------------------------------------

  receive(data) {
    if (typeof data !== "string") {
      this.stats.received += data.byteLength >> 1;
      if (this.graph && this.state === "live") this.graph.play(data);
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    switch (event.type) {
      case "warming":
        this.setState("warming");
        break;
      case "ready":
        this.session = event.session;
        this.setState("live", { session: event.session });
        this.pinger = setInterval(() => this.ping(), PING_EVERY_MS);
        this.ping();
        break;
      case "text":
        this.stats.textPieces += 1;
        this.handlers.onText(event.text);
        break;
      case "pong":
        this.ponged(event.id);
        break;
      case "error":
        this.lastError = event;
        this.handlers.onNotice({ kind: "error", message: event.message });
        break;
      case "end":
        this.endEvent = event;
        break;
    }
  }

  ping() {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    const id = this.nextPing++;
    this.pings.set(id, performance.now());
    if (this.pings.size > 30) this.pings.delete(this.pings.keys().next().value); // never answered
    this.socket.send(JSON.stringify({ type: "ping", id }));
  }

  ponged(id) {
    const sent = this.pings.get(id);
    if (sent === undefined) return;
    this.pings.delete(id);
    this.rtts.push(performance.now() - sent);
    if (this.rtts.length > RTT_WINDOW) this.rtts.shift();
    const sorted = [...this.rtts].sort((a, b) => a - b);
    this.stats.rttMs = sorted[sorted.length >> 1];
    this.handlers.onStats(this.stats);
  }

  closed(code, reason) {
    if (this.finished) return;
    const end = this.endEvent;
    const message = this.lastError ? this.lastError.message : reason;
    if (code === TRY_LATER) {
      this.finish({ state: "refused", message, retryAfterS: this.lastError ? this.lastError.retry_after_s : null });
    } else if (end && SERVER_FAILURES.has(end.reason)) {
      this.finish({ state: "error", reason: end.reason, message: message || end.reason });
    } else if (end) {
      this.finish({ state: "ended", reason: end.reason, stats: end.stats });
    } else if (GOING_AWAY.has(code)) {
      this.finish({ state: "ended", reason: "server-shutdown" });
    } else if (this.hangingUp) {
      this.finish({ state: "ended", reason: "client-ended" });
    } else if (message) {
      this.finish({ state: "error", message });
    } else if (!this.opened) {
      this.finish({ state: "error", message: "could not reach the server (is it running? is the token right?)" });
    } else {
      this.finish({ state: "error", message: `the connection was lost (code ${code})` });
    }
  }

  fail(message) {
    if (this.finished) return;
    this.finish({ state: "error", message });
    if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "client error");
  }

  finish(outcome) {
    this.finished = true;
    clearInterval(this.pinger);
    clearTimeout(this.hangUpTimer);
    if (this.graph) this.graph.close();
    else if (this.context && this.context.state !== "closed") this.context.close();
    this.setState(outcome.state, outcome);
  }

  setState(state, detail = {}) {
    this.state = state;
    this.handlers.onState(state, detail);
  }
}

function microphoneProblem(error) {
  switch (error.name) {
    case "InsecureContext":
      return "the microphone needs a secure page: open this page over https (aimsvoice serve --ssl self-signed) or on localhost";
    case "NotAllowedError":
    case "SecurityError":
      return "the microphone is not allowed: allow it for this site (the icon by the address) and connect again";
    case "NotFoundError":
    case "OverconstrainedError":
      return "no microphone found: connect one and try again";
    case "NotReadableError":
    case "AbortError":
      return "the microphone could not be opened: another application may be using it";
    default:
      return `the microphone failed (${error.name}: ${error.message})`;
  }
}
