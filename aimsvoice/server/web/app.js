// The page: persona picker, token, Connect / Hang up, the call's state, words, levels, latency.
//
// The state is always on screen and on the root element as data-state (idle, connecting,
// warming, live, refused, ended, error), with the call's counters beside it (data-samples-sent,
// data-samples-played, data-text-pieces, data-rtt-ms...): styles and tests read them there.
// `?persona=NAME` picks a persona, `&connect=1` connects at once (kiosks, shortcuts).

import { Call } from "./call.js";

const TOKEN_KEY = "aimsvoice-token";
const WORDS_KEPT = 4000; // characters of the agent's words kept on screen
const RENDER_EVERY_MS = 100;
const METER_FLOOR_DB = -60;

const root = document.documentElement;
const $ = (id) => document.getElementById(id);
const ui = {
  stateLabel: $("state-label"),
  stateDetail: $("state-detail"),
  notice: $("notice"),
  tokenForm: $("token-form"),
  token: $("token"),
  tokenProblem: $("token-problem"),
  setup: $("setup"),
  persona: $("persona"),
  personaAbout: $("persona-about"),
  textPrompt: $("text-prompt"),
  promptCount: $("prompt-count"),
  call: $("call"),
  sound: $("sound"),
  inMeter: $("in-meter"),
  outMeter: $("out-meter"),
  rtt: $("rtt"),
  buffer: $("buffer"),
  played: $("played"),
  words: $("words"),
};

const LABELS = {
  idle: "Not connected",
  connecting: "Connecting…",
  warming: "Warming up…",
  live: "Live",
  refused: "Server full",
  ended: "Call ended",
  error: "Problem",
};

const END_REASONS = {
  "idle-timeout": "No voice was heard for a while, so the server ended the call (its idle timeout).",
  "session-limit": "The call reached the server's time limit for a session.",
  "server-shutdown": "The server is stopping.",
  "client-ended": "You hung up.",
  "client-closed": "The connection was closed.",
};

const params = new URLSearchParams(location.search);
let personas = [];
let call = null;
let retryTimer = null;
let renderTimer = null;
let wordsKept = 0;

// -- state ----------------------------------------------------------------------------------

function show(state, detail = "") {
  root.dataset.state = state;
  ui.stateLabel.textContent = LABELS[state];
  ui.stateDetail.textContent = detail;
  const inCall = state === "connecting" || state === "warming" || state === "live";
  ui.call.textContent = inCall ? "Hang up" : "Connect";
  ui.call.classList.toggle("hang-up", inCall);
  ui.call.disabled = !inCall && personas.length === 0;
  ui.persona.disabled = inCall;
  ui.textPrompt.disabled = inCall;
  if (!inCall) ui.sound.hidden = true;
}

function onState(state, detail) {
  clearTimeout(retryTimer);
  delete root.dataset.endReason;
  delete root.dataset.retryAfterS;
  switch (state) {
    case "connecting":
      show(state, "Opening the microphone; the persona gets ready.");
      break;
    case "warming":
      show(state, "The server is loading the model: this takes a little while.");
      break;
    case "live":
      root.dataset.session = detail.session;
      show(state, "Speak any time, and interrupt whenever you like. Esc hangs up.");
      ui.notice.textContent = "";
      break;
    case "refused":
      refused(detail);
      break;
    case "ended": {
      root.dataset.endReason = detail.reason;
      const duration = detail.stats && detail.stats.duration_s != null ? ` (${detail.stats.duration_s.toFixed(1)} s)` : "";
      show(state, (END_REASONS[detail.reason] || `The call ended (${detail.reason}).`) + duration);
      break;
    }
    case "error":
      if (detail.reason) root.dataset.endReason = detail.reason;
      show(state, capitalize(detail.message || "Something went wrong."));
      break;
  }
  if (state === "refused" || state === "ended" || state === "error") {
    ui.notice.textContent = ""; // the state's own line says it now
    stopRendering();
  }
}

function refused({ message, retryAfterS }) {
  // The server says "the server is full (N sessions at once); try again in S s": its first half, then
  // when, as a time of day (a countdown would have screen readers read the status every second).
  const what = capitalize((message || "the server is full").split(";")[0].trim());
  const seconds = Number.isFinite(retryAfterS) ? retryAfterS : null;
  if (seconds === null) {
    show("refused", `${what}. Try again later.`);
    return;
  }
  root.dataset.retryAfterS = String(seconds);
  const at = new Date(Date.now() + 1000 * seconds).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  show("refused", `${what}. Try again in ${seconds} s, at ${at}.`);
  retryTimer = setTimeout(() => show("refused", `${what}. You can try again now.`), 1000 * seconds);
}

// -- the call -------------------------------------------------------------------------------

function connect() {
  delete root.dataset.session;
  const persona = ui.persona.value;
  const config = { persona };
  const prompt = ui.textPrompt.value.trim();
  if (prompt) config.text_prompt = prompt;
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) url.searchParams.set("token", token);
  ui.words.textContent = "";
  ui.notice.textContent = "";
  call = new Call({
    onState,
    onText: addWords,
    onNotice: notice,
    onStats: () => {},
  });
  call.start(url.href, config);
  startRendering(call);
}

function notice({ kind, message }) {
  if (kind === "suspended") ui.sound.hidden = false;
  else if (kind === "sound-on") ui.sound.hidden = true;
  else if (kind === "error") ui.notice.textContent = capitalize(message) + ".";
}

// Each piece is a text node added (a log region reads additions); the oldest go past WORDS_KEPT characters.
function addWords(text) {
  const words = ui.words;
  let line = words.lastElementChild;
  if (!line) {
    line = document.createElement("p");
    words.append(line);
    wordsKept = 0;
  }
  line.append(document.createTextNode(text));
  wordsKept += text.length;
  while (wordsKept > WORDS_KEPT && line.firstChild) {
    wordsKept -= line.firstChild.textContent.length;
    line.firstChild.remove();
  }
  words.scrollTop = words.scrollHeight;
}

// -- levels, latency, counters --------------------------------------------------------------

function startRendering(current) {
  stopRendering();
  renderTimer = setInterval(() => render(current.stats), RENDER_EVERY_MS);
}

function stopRendering() {
  if (call) render(call.stats);
  clearInterval(renderTimer);
  renderTimer = null;
  meter(ui.inMeter, 0);
  meter(ui.outMeter, 0);
}

function render(stats) {
  meter(ui.inMeter, stats.inRms);
  meter(ui.outMeter, stats.outRms);
  ui.rtt.textContent = stats.rttMs == null ? "–" : `${Math.round(stats.rttMs)} ms`;
  ui.buffer.textContent = `${Math.round(stats.bufferedMs)} ms`;
  ui.played.textContent = `${(stats.played / 24000).toFixed(1)} s`;
  Object.assign(root.dataset, {
    samplesSent: stats.sent,
    samplesReceived: stats.received,
    samplesPlayed: stats.played,
    samplesDropped: stats.dropped,
    underruns: stats.underruns,
    textPieces: stats.textPieces,
    rttMs: stats.rttMs == null ? "" : stats.rttMs.toFixed(1),
  });
}

function meter(element, rms) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
  const level = Math.max(0, Math.min(1, (db - METER_FLOOR_DB) / -METER_FLOOR_DB));
  element.style.setProperty("--level", level.toFixed(3));
  element.setAttribute("aria-valuenow", String(Math.round(level * 100)));
  element.setAttribute("aria-valuetext", Number.isFinite(db) ? `${Math.round(db)} dB` : "silent");
}

// -- personas and the token -----------------------------------------------------------------

async function loadPersonas() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  let response;
  try {
    response = await fetch("api/personas", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  } catch {
    show("error", "Cannot reach the server. Is `aimsvoice serve` running?");
    return false;
  }
  if (response.status === 401) {
    if (token) {
      sessionStorage.removeItem(TOKEN_KEY);
      ui.tokenProblem.textContent = "That token was not accepted; check it and try again.";
    }
    ui.tokenForm.hidden = false;
    ui.token.focus();
    show("idle", "This server needs an access token.");
    return false;
  }
  if (!response.ok) {
    show("error", `The server did not list its personas (${(await response.text()).trim() || response.status}).`);
    return false;
  }
  const body = await response.json();
  personas = body.personas;
  ui.tokenForm.hidden = true;
  ui.persona.replaceChildren(
    ...personas.map((p) => {
      const option = document.createElement("option");
      option.value = p.name;
      option.textContent = p.display_name;
      return option;
    }),
  );
  const wanted = (params.get("persona") || body.default || "").toLowerCase();
  const found = personas.find((p) => p.name === wanted);
  if (found) ui.persona.value = found.name;
  describePersona();
  show("idle", "Pick a persona and connect. The microphone opens when you do.");
  if (params.get("persona") && !found) {
    ui.notice.textContent = `There is no persona "${params.get("persona")}" here: pick one.`;
    return false;
  }
  return true;
}

function describePersona() {
  const p = personas.find((x) => x.name === ui.persona.value);
  ui.personaAbout.textContent = p ? [p.description, `Voice ${p.voice}.`].filter(Boolean).join(" ") : "";
}

// -- wiring ---------------------------------------------------------------------------------

ui.setup.addEventListener("submit", (event) => {
  event.preventDefault();
  if (call && !call.finished) call.hangUp();
  else connect();
});

ui.tokenForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  ui.token.value = "";
  ui.tokenProblem.textContent = "";
  if (await loadPersonas()) ui.call.focus();
});

ui.persona.addEventListener("change", describePersona);
ui.textPrompt.addEventListener("input", () => {
  ui.promptCount.textContent = `${ui.textPrompt.value.length} / ${ui.textPrompt.maxLength}`;
});
ui.sound.addEventListener("click", () => call && call.resume());
// A browser that keeps sound off until the user acts (a page opened with ?connect=1): any act turns it on.
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, () => call && call.resume());
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && call && !call.finished) call.hangUp();
});

if (!window.isSecureContext) {
  ui.notice.textContent =
    "This page is not secure, so the browser will not give it the microphone: " +
    "start the server with --ssl self-signed and open it over https, or open it on localhost.";
}

show("idle", "Loading the personas…");
meter(ui.inMeter, 0);
meter(ui.outMeter, 0);
loadPersonas().then((ok) => {
  if (ok && params.get("connect") === "1") connect();
});

function capitalize(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}
