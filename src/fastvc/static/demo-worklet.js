// AudioWorklet processors of the fastvc demo (they run on the browser's audio thread).
//
//   microphone -> "fastvc-capture"  -> port: {pcm: Int16Array frame, level}      -> WebSocket
//   WebSocket  -> port: {pcm: Int16Array} -> "fastvc-playback" (jitter buffer) -> speakers
//
// Both run at the AudioContext's rate (16 kHz when the browser allows it), so no resampling happens here.

const FRAME_MS = 20;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frameSamples = Math.round(sampleRate * FRAME_MS / 1000);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const x = Math.max(-1, Math.min(1, channel[i]));
      this.sumSquares += x * x;
      this.frame[this.filled++] = x < 0 ? x * 0x8000 : x * 0x7fff;
      if (this.filled === this.frameSamples) this.flush();
    }
    return true;
  }

  flush() {
    const level = Math.sqrt(this.sumSquares / this.frameSamples);
    this.port.postMessage({ pcm: this.frame, level }, [this.frame.buffer]);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
  }
}

// A ring buffer that starts playing once `jitterMs` of audio is queued, and goes back to pre-buffering
// (counting an underrun) when it runs dry. It reports what it actually played: samples and energy.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetSamples = Math.round(sampleRate * (opts.jitterMs || 100) / 1000);
    this.ring = new Float32Array(sampleRate * 20);
    this.readAt = 0;
    this.queued = 0;
    this.playing = false;
    this.underruns = 0;
    this.playedSamples = 0;
    this.playedEnergy = 0;
    this.reportEvery = Math.round(sampleRate / 8);
    this.sinceReport = 0;
    this.windowSquares = 0;
    this.port.onmessage = (event) => this.enqueue(event.data.pcm);
  }

  enqueue(pcm) {
    const ring = this.ring;
    if (this.queued + pcm.length > ring.length) return;  // more than 20 s behind: drop, never grow
    let writeAt = (this.readAt + this.queued) % ring.length;
    for (let i = 0; i < pcm.length; i++) {
      ring[writeAt] = pcm[i] / 0x8000;
      writeAt = writeAt + 1 === ring.length ? 0 : writeAt + 1;
    }
    this.queued += pcm.length;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.queued >= this.targetSamples) this.playing = true;
    for (let i = 0; i < out.length; i++) {
      if (this.playing && this.queued > 0) {
        const x = this.ring[this.readAt];
        this.readAt = this.readAt + 1 === this.ring.length ? 0 : this.readAt + 1;
        this.queued--;
        out[i] = x;
        this.playedSamples++;
        this.playedEnergy += x * x;
        this.windowSquares += x * x;
      } else {
        if (this.playing) { this.playing = false; this.underruns++; }
        out[i] = 0;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) this.report();
    return true;
  }

  report() {
    this.port.postMessage({
      bufferedMs: 1000 * this.queued / sampleRate,
      playedSamples: this.playedSamples,
      playedEnergy: this.playedEnergy,
      level: Math.sqrt(this.windowSquares / this.sinceReport),
      underruns: this.underruns,
    });
    this.sinceReport = 0;
    this.windowSquares = 0;
  }
}

registerProcessor("fastvc-capture", CaptureProcessor);
registerProcessor("fastvc-playback", PlaybackProcessor);
