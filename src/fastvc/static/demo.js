// fastvc demo page: microphone -> AudioWorklet -> PCM16 over the native WebSocket protocol -> jitter buffer.
//
//   GET /voices                     -> {"voices": [...], "default": "..."}
//   WS  /ws  {"type":"config",...}  -> {"type":"ready"}, binary PCM16 both ways,
//            {"type":"end"}         -> {"type":"complete","stats":{...}}  (or {"type":"error",...})
//
// `window.fastvcDemo` holds the live numbers (the browser test reads them).

const REQUESTED_RATE_HZ = 16000;
const params = new URLSearchParams(location.search);
const JITTER_MS = Number(params.get("jitter_ms") || 100);

const $ = (id) => document.getElementById(id);

const demo = {
  phase: "idle",          // idle -> connecting -> streaming -> ending -> done | error
  sampleRateHz: null,
  latencyMs: null,        // latest block latency: input sample sent -> same stream position received
  latenciesMs: [],
  sentSamples: 0,
  receivedSamples: 0,
  playedSamples: 0,
  playedEnergy: 0,
  underruns: 0,
  stats: null,
  error: null,
};
window.fastvcDemo = demo;

let audio = null;   // {context, stream, source, capture, playback, mute}
let socket = null;
let sendLog = [];   // [{endSample, timeMs}] of sent frames, oldest first, for the latency readout

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setPhase(phase) {
  demo.phase = phase;
  $("start").disabled = !["idle", "done", "error"].includes(phase);
  $("stop").disabled = phase !== "streaming";
  $("voice").disabled = $("start").disabled;
}

async function loadVoices() {
  try {
    const response = await fetch("/voices");
    if (!response.ok) throw new Error(`GET /voices: HTTP ${response.status}`);
    const { voices, default: preferred } = await response.json();
    const select = $("voice");
    select.replaceChildren(...voices.map((name) => new Option(name, name, false, name === preferred)));
    setPhase("idle");
    setStatus(`${voices.length} voice${voices.length === 1 ? "" : "s"} available`);
  } catch (error) {
    fail(`could not load the voices: ${error.message}`);
  }
}

async function openAudio() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
  });
  try {
    return await buildGraph(stream, REQUESTED_RATE_HZ);
  } catch (error) {
    // Some browsers refuse a 16 kHz context next to a microphone at another rate: use the browser's own
    // rate; the server resamples whatever rate the config names.
    console.warn(`16 kHz audio graph refused (${error.message}); using the browser's rate`);
    try {
      return await buildGraph(stream, undefined);
    } catch (again) {
      stream.getTracks().forEach((track) => track.stop());
      throw again;
    }
  }
}

async function buildGraph(stream, rateHz) {
  const context = new AudioContext(rateHz ? { sampleRate: rateHz, latencyHint: "interactive" }
                                          : { latencyHint: "interactive" });
  try {
    await context.audioWorklet.addModule("/demo/demo-worklet.js");
    const source = context.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(context, "fastvc-capture", { numberOfOutputs: 1 });
    const mute = new GainNode(context, { gain: 0 });  // keeps the capture node pulled without hearing yourself
    capture.connect(mute).connect(context.destination);
    const playback = new AudioWorkletNode(context, "fastvc-playback", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { jitterMs: JITTER_MS },
    });
    playback.connect(context.destination);
    capture.port.onmessage = (event) => onCapturedFrame(event.data);
    playback.port.onmessage = (event) => onPlaybackReport(event.data);
    await context.resume();
    return { context, stream, source, capture, playback, mute };
  } catch (error) {
    context.close();
    throw error;
  }
}

function closeAudio() {
  if (!audio) return;
  audio.stream.getTracks().forEach((track) => track.stop());
  audio.source.disconnect();
  const context = audio.context;
  audio = null;
  // Let the jitter buffer play out what it holds before the context goes.
  setTimeout(() => context.close(), 1000 + JITTER_MS);
}

async function start() {
  Object.assign(demo, { latencyMs: null, latenciesMs: [], sentSamples: 0, receivedSamples: 0, playedSamples: 0,
                        playedEnergy: 0, underruns: 0, stats: null, error: null });
  sendLog = [];
  renderStats(null);
  setPhase("connecting");
  setStatus("opening the microphone…");
  try {
    audio = await openAudio();
  } catch (error) {
    fail(`microphone: ${error.message}`);
    return;
  }
  demo.sampleRateHz = audio.context.sampleRate;
  setStatus("connecting…");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify(configMessage()));
  socket.onmessage = (event) => (typeof event.data === "string" ? onControl(JSON.parse(event.data))
                                                                 : onConvertedAudio(event.data));
  socket.onclose = (event) => {
    if (!["done", "error"].includes(demo.phase)) fail(`connection closed (${event.code} ${event.reason})`);
  };
}

function configMessage() {
  const config = {
    type: "config", sample_rate: demo.sampleRateHz, bit_depth: 16, channels: 1, encoding: "PCM",
    sample_rate_out: demo.sampleRateHz, voice: $("voice").value,
  };
  const apiKey = $("api-key").value.trim();
  if (apiKey) config.api_key = apiKey;
  return config;
}

function stop() {
  if (demo.phase !== "streaming") return;
  setPhase("ending");
  setStatus("finishing…");
  audio.source.disconnect();
  socket.send(JSON.stringify({ type: "end" }));
}

function onControl(message) {
  if (message.type === "ready") {
    setPhase("streaming");
    setStatus("streaming: speak now");
    audio.source.connect(audio.capture);
  } else if (message.type === "complete") {
    demo.stats = message.stats;
    renderStats(message.stats);
    setPhase("done");
    setStatus("done");
    closeAudio();
  } else if (message.type === "error") {
    fail(`${message.error_code}: ${message.message}`);
  }
}

function onCapturedFrame({ pcm, level }) {
  $("mic-level").value = Math.min(1, level * 4);
  if (demo.phase !== "streaming") return;
  socket.send(pcm.buffer);
  demo.sentSamples += pcm.length;
  sendLog.push({ endSample: demo.sentSamples, timeMs: performance.now() });
  renderProgress();
}

function onConvertedAudio(buffer) {
  const pcm = new Int16Array(buffer);
  demo.receivedSamples += pcm.length;
  // Output and input run at the same rate: the newest output sample sits at the same stream position.
  while (sendLog.length > 1 && sendLog[0].endSample < demo.receivedSamples) sendLog.shift();
  // Only while streaming: after "end" the server computes the tail at once, which says nothing of the latency.
  if (demo.phase === "streaming" && sendLog.length && sendLog[0].endSample >= demo.receivedSamples) {
    demo.latencyMs = performance.now() - sendLog[0].timeMs;
    demo.latenciesMs.push(demo.latencyMs);
    $("latency").textContent = `${Math.round(demo.latencyMs)} ms`;
  }
  if (audio) audio.playback.port.postMessage({ pcm }, [pcm.buffer]);
  renderProgress();
}

function onPlaybackReport(report) {
  demo.playedSamples = report.playedSamples;
  demo.playedEnergy = report.playedEnergy;
  demo.underruns = report.underruns;
  $("buffered").textContent = `${Math.round(report.bufferedMs)} ms, ${report.underruns} underrun${report.underruns === 1 ? "" : "s"}`;
  $("out-level").value = Math.min(1, report.level * 4);
}

function renderProgress() {
  const rate = demo.sampleRateHz || REQUESTED_RATE_HZ;
  $("progress").textContent = `${(demo.sentSamples / rate).toFixed(1)} s / ${(demo.receivedSamples / rate).toFixed(1)} s`;
}

function renderStats(stats) {
  const body = $("stats").tBodies[0];
  if (!stats) {
    body.innerHTML = '<tr><td class="empty">shown when a session ends</td></tr>';
    return;
  }
  const rows = [];
  const walk = (prefix, value) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(prefix ? `${prefix}.${key}` : key, inner);
    } else {
      rows.push([prefix, typeof value === "number" ? Number(value.toFixed(3)) : JSON.stringify(value)]);
    }
  };
  walk("", stats);
  body.replaceChildren(...rows.map(([name, value]) => {
    const row = document.createElement("tr");
    for (const text of [name, value]) row.insertCell().textContent = String(text);
    return row;
  }));
}

function fail(text) {
  demo.error = text;
  setPhase("error");
  setStatus(text, true);
  if (socket && socket.readyState === WebSocket.OPEN) socket.close();
  closeAudio();
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
loadVoices();
