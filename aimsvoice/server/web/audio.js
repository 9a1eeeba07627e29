// The page's audio graph: microphone -> capture worklet -> (the page sends) ... (the page
// receives) -> playback worklet -> speaker. One AudioContext, at 24 kHz where the browser allows
// it (the browser then resamples the microphone and the speaker itself, well); where it does not
// (a context at another rate, or one that cannot take a microphone stream at a foreign rate),
// the worklets resample.

export const RATE = 24000;
export const FRAME = 1920; // samples per 80 ms frame at 24 kHz

// The browser's own echo cancellation, noise suppression and gain control: the agent's voice from
// the loudspeaker must not come back as the user's.
export const MICROPHONE = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  video: false,
};

// Jitter buffer (jitter.js): audio starts 60 ms behind its arrival, the delay never exceeds
// 240 ms (3 frames), and a standing excess over 20 ms is dropped within a second.
export const PLAYBACK = { leadMs: 60, maxMs: 240, windowMs: 1000, slackMs: 20 };

/** A context, made at once: call it from the click (or key press) that starts the call, before any await. */
export function newContext() {
  try {
    return new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  } catch {
    return new AudioContext({ latencyHint: "interactive" });
  }
}

/** The microphone, with the browser's processing on. Throws a DOMException (NotAllowedError, NotFoundError...). */
export async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    const error = new Error("insecure");
    error.name = "InsecureContext";
    throw error;
  }
  return navigator.mediaDevices.getUserMedia(MICROPHONE);
}

/**
 * The graph on `context` for `stream`: capture frames go to onFrame({pcm, rms, peak}), playback
 * reports to onPlayback({played, underruns, dropped, bufferedMs, rms, peak}). Returns
 * {context, play(arrayBuffer), close()}. When the context cannot take the stream at its rate,
 * it is closed and a context at the browser's own rate is made (its state may then be "suspended").
 */
export async function startGraph(context, stream, { onFrame, onPlayback }) {
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch (error) {
    if (error.name !== "NotSupportedError") throw error; // Firefox: a 24 kHz context takes no 48 kHz microphone
    await context.close();
    context = new AudioContext({ latencyHint: "interactive" });
    source = context.createMediaStreamSource(stream);
  }
  await context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  await context.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url));
  const capture = new AudioWorkletNode(context, "aimsvoice-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1, // silent, but an output keeps it pulled by the destination in every browser
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: "explicit",
    channelInterpretation: "speakers",
  });
  const playback = new AudioWorkletNode(context, "aimsvoice-playback", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: PLAYBACK,
  });
  capture.port.onmessage = (event) => onFrame(event.data);
  playback.port.onmessage = (event) => onPlayback(event.data);
  source.connect(capture);
  capture.connect(context.destination);
  playback.connect(context.destination);
  return {
    context,
    play(bytes) {
      playback.port.postMessage({ pcm: bytes }, [bytes]);
    },
    async close() {
      capture.port.onmessage = null;
      playback.port.onmessage = null;
      for (const track of stream.getTracks()) track.stop();
      source.disconnect();
      capture.disconnect();
      playback.disconnect();
      if (context.state !== "closed") await context.close();
    },
  };
}
