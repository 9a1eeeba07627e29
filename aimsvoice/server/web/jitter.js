// The agent's audio between the network and the speaker: a small jitter buffer that never drifts.
//
// The server sends one 80 ms frame per tick, on its clock; the speaker takes 128 samples at a
// time, on the sound card's. The buffer absorbs the network's jitter and keeps the delay bounded
// whatever the two clocks and the network do:
//
// - Start: playback begins `lead` samples of silence ahead of the first audio, so audio that
//   comes up to `lead` late still plays on time. After an underrun (the buffer ran dry: the rest
//   of that block is silence, counted) it starts again the same way.
// - Hard bound: audio that would take the delay past `max` is late; the oldest goes, down to the
//   delay of a fresh start (`lead` plus what just came), so a burst after a stall is not queued.
// - Standing excess: when the delay has stayed above `lead + slack` for a whole `window` (its
//   minimum over the window, just before each frame comes, is still that high), the excess is
//   dropped: after a hiccup the delay is back to its baseline within a window, and a sender whose
//   clock runs fast never makes it creep.
// - Every cut fades in over `fade` samples from the last sample played: no click.
//
// Pure and allocation-free once built (it runs on the audio rendering thread): playback-worklet.js
// drives it, the page's tests drive it on a virtual clock. All sizes are in samples at the
// AudioContext's rate.

export class JitterBuffer {
  constructor({ lead, max, window, slack = 0, fade = 64 }) {
    if (!(lead >= 0 && max > lead && window > 0)) throw new Error("JitterBuffer: need 0 <= lead < max and window > 0");
    this.lead = lead;
    this.max = max;
    this.window = window;
    this.slack = slack;
    this.fade = fade;
    this.ring = new Float32Array(max);
    this.read = 0;
    this.n = 0; // samples of audio held
    this.wait = 0; // samples of lead silence still to play before them
    this.playing = false;
    this.lastOut = 0;
    this.fadeLeft = 0;
    this.windowLeft = window;
    this.windowMin = Infinity;
    // counters
    this.played = 0; // samples of the agent's audio played
    this.underruns = 0; // times the buffer ran dry while playing
    this.dropped = 0; // samples of late audio dropped
  }

  /** Delay now: samples held plus the lead silence to come. */
  get depth() {
    return this.n + this.wait;
  }

  /** Audio from the network (any length). */
  push(pcm) {
    if (!this.playing) {
      this.playing = true;
      this.wait = this.lead;
    } else {
      this.windowMin = Math.min(this.windowMin, this.depth); // the low point: just before audio comes
    }
    let data = pcm;
    if (data.length > this.max) {
      this.dropped += data.length - this.max;
      data = data.subarray(data.length - this.max);
    }
    if (this.depth + data.length > this.max) {
      this.cut(this.depth + data.length - Math.min(this.max, this.lead + data.length));
    }
    const cap = this.ring.length;
    let write = (this.read + this.n) % cap;
    const first = Math.min(data.length, cap - write);
    this.ring.set(data.subarray(0, first), write);
    if (first < data.length) this.ring.set(data.subarray(first), 0);
    this.n += data.length;
  }

  /** Fill `out` (one render quantum) with what plays now. */
  pull(out) {
    let k = 0;
    if (this.playing) {
      const silence = Math.min(this.wait, out.length);
      out.fill(0, 0, silence);
      this.wait -= silence;
      k = silence;
      const cap = this.ring.length;
      while (k < out.length && this.n > 0) {
        let x = this.ring[this.read];
        if (this.fadeLeft > 0) {
          const g = 1 - this.fadeLeft / this.fade;
          x = this.lastOut * (1 - g) + x * g;
          this.fadeLeft--;
        }
        out[k++] = x;
        this.read = (this.read + 1) % cap;
        this.n--;
        this.played++;
      }
      if (k < out.length) {
        this.underruns++;
        this.playing = false; // the next audio starts afresh, behind a lead
        this.windowMin = Infinity;
        this.windowLeft = this.window;
      }
    }
    out.fill(0, k);
    this.lastOut = out[out.length - 1];
    this.drain(out.length);
  }

  /** Once per window: drop a standing excess above the lead. */
  drain(elapsed) {
    if (!this.playing) return;
    this.windowLeft -= elapsed;
    if (this.windowLeft > 0) return;
    const excess = this.windowMin - this.lead;
    if (Number.isFinite(excess) && excess > this.slack) this.cut(Math.min(excess, this.depth));
    this.windowLeft = this.window;
    this.windowMin = Infinity;
  }

  /** Drop `count` samples of delay: lead silence first, then the oldest audio, faded in after. */
  cut(count) {
    const silence = Math.min(this.wait, count);
    this.wait -= silence;
    const audio = Math.min(this.n, count - silence);
    if (audio > 0) {
      this.read = (this.read + audio) % this.ring.length;
      this.n -= audio;
      this.dropped += audio;
      this.fadeLeft = this.fade;
    }
  }

  /** Forget everything (a new session); counters too. */
  reset() {
    this.read = 0;
    this.n = 0;
    this.wait = 0;
    this.playing = false;
    this.fadeLeft = 0;
    this.lastOut = 0;
    this.windowLeft = this.window;
    this.windowMin = Infinity;
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
  }
}
