// The click-to-segment page: plain JavaScript over the /v1 API, nothing fetched from elsewhere.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const picture = $("picture"), maskCanvas = $("mask"), promptCanvas = $("prompts");
  const state = { imageId: null, width: 0, height: 0, points: [], labels: [], box: null,
                  answer: null, chosen: 0, drag: null, request: 0, uploadMs: 0,
                  encodeMs: 0, cached: false };
  window.samexportPage = state;  // for tests and the curious

  function setStatus(text, kind) {
    $("status").textContent = text;
    $("status").dataset.state = kind;
  }

  async function call(path, options) {
    const response = await fetch(path, options);
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(`${response.status}: ${body.detail}`);
    return body;
  }

  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    setStatus("encoding...", "busy");
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
    const form = new FormData();
    form.append("image", file);
    const start = performance.now();
    try {
      const answer = await call("v1/images", { method: "POST", body: form });
      state.uploadMs = performance.now() - start;
      Object.assign(state, { imageId: answer.image_id, width: answer.width, height: answer.height,
                             points: [], labels: [], box: null, answer: null, chosen: 0 });
      for (const canvas of [picture, maskCanvas, promptCanvas]) {
        canvas.width = answer.width;
        canvas.height = answer.height;
      }
      const scale = Math.min(800 / answer.width, 600 / answer.height, 8);
      $("stage").style.width = `${answer.width * scale}px`;
      picture.style.width = `${answer.width * scale}px`;
      if (bitmap) picture.getContext("2d").drawImage(bitmap, 0, 0, answer.width, answer.height);
      $("stage").hidden = false;
      $("clear").disabled = false;
      drawMask();
      drawPrompts();
      state.encodeMs = answer.timings_ms.encode;
      state.cached = answer.cached;
      $("timings").textContent = uploadTimings();
      setStatus("click the image", "ready");
    } catch (error) {
      setStatus(error.message, "error");
    }
  });

  function uploadTimings() {
    return `image: upload + encode ${state.uploadMs.toFixed(1)} ms | ` +
      (state.cached ? "encoder 0.0 ms (cached)" : `encoder ${state.encodeMs.toFixed(1)} ms`);
  }

  function imagePoint(event) {
    const rect = promptCanvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * state.width / rect.width,
            (event.clientY - rect.top) * state.height / rect.height];
  }

  promptCanvas.addEventListener("contextmenu", (event) => event.preventDefault());
  promptCanvas.addEventListener("mousedown", (event) => {
    state.drag = { start: imagePoint(event), button: event.button, screen: [event.clientX, event.clientY] };
  });
  promptCanvas.addEventListener("mousemove", (event) => {
    if (!state.drag || state.drag.button !== 0) return;
    const [x0, y0] = state.drag.start, [x1, y1] = imagePoint(event);
    drawPrompts([Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)]);
  });
  promptCanvas.addEventListener("mouseup", (event) => {
    const drag = state.drag;
    state.drag = null;
    if (!drag || !state.imageId) return;
    const moved = Math.hypot(event.clientX - drag.screen[0], event.clientY - drag.screen[1]);
    if (drag.button === 0 && moved > 4) {
      const [x0, y0] = drag.start, [x1, y1] = imagePoint(event);
      state.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
    } else if (drag.button === 0 || drag.button === 2) {
      state.points.push(drag.start);
      state.labels.push(drag.button === 0 ? 1 : 0);
    } else {
      return;
    }
    drawPrompts();
    predict();
  });

  $("clear").addEventListener("click", () => {
    Object.assign(state, { points: [], labels: [], box: null, answer: null, chosen: 0 });
    $("masks").textContent = "";
    $("download").disabled = true;
    drawMask();
    drawPrompts();
  });

  async function predict() {
    const request = ++state.request;
    const prompt = { image_id: state.imageId, multimask: true };
    if (state.points.length) Object.assign(prompt, { points: state.points, labels: state.labels });
    if (state.box) prompt.box = state.box;
    setStatus("segmenting...", "busy");
    const start = performance.now();
    try {
      const answer = await call("v1/masks", { method: "POST", headers: { "content-type": "application/json" },
                                              body: JSON.stringify(prompt) });
      if (request !== state.request) return;  // a newer click is on its way
      const roundTrip = performance.now() - start;
      state.answer = answer;
      state.chosen = answer.scores.indexOf(Math.max(...answer.scores));
      showChoices();
      drawMask();
      const t = answer.timings_ms;
      $("timings").textContent =
        `prompt: round trip ${roundTrip.toFixed(1)} ms | server ${t.total.toFixed(1)} ms: queue ${t.queue.toFixed(1)} ms, ` +
        `decoder ${t.decode.toFixed(1)} ms (batch of ${answer.batch_size}), output ${t.output.toFixed(1)} ms\n` +
        uploadTimings();
      setStatus("done", "done");
    } catch (error) {
      if (request === state.request) setStatus(error.message, "error");
    }
  }

  function showChoices() {
    const holder = $("masks");
    holder.textContent = "";
    state.answer.masks.forEach((mask, i) => {
      const button = document.createElement("button");
      button.textContent = `mask ${i + 1} (${mask.score.toFixed(3)})`;
      button.className = i === state.chosen ? "chosen" : "";
      button.addEventListener("click", () => { state.chosen = i; showChoices(); drawMask(); });
      holder.appendChild(button);
    });
    $("download").disabled = false;
  }

  // HxW bool mask (row-major Uint8Array) from uncompressed COCO RLE (column-major runs, 0s first).
  function decodeRle(rle) {
    const [height, width] = rle.size;
    const mask = new Uint8Array(height * width);
    let index = 0, value = 0;
    for (const count of rle.counts) {
      if (value) {
        for (let i = index; i < index + count; i++) mask[(i % height) * width + Math.floor(i / height)] = 1;
      }
      index += count;
      value ^= 1;
    }
    return mask;
  }
  state.decodeRle = decodeRle;

  function drawMask() {
    const context = maskCanvas.getContext("2d");
    context.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    if (!state.answer) return;
    const mask = decodeRle(state.answer.masks[state.chosen].rle);
    const pixels = context.createImageData(state.width, state.height);
    for (let i = 0; i < mask.length; i++) {
      if (mask[i]) pixels.data.set([30, 144, 255, 128], i * 4);
    }
    context.putImageData(pixels, 0, 0);
  }

  function drawPrompts(pendingBox) {
    const context = promptCanvas.getContext("2d");
    context.clearRect(0, 0, promptCanvas.width, promptCanvas.height);
    const unit = Math.max(state.width, state.height) / 200;
    context.lineWidth = unit / 2;
    for (const box of [state.box, pendingBox]) {
      if (!box) continue;
      context.strokeStyle = "#ffd700";
      context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    }
    state.points.forEach(([x, y], i) => {
      context.fillStyle = state.labels[i] ? "#32cd32" : "#ff4500";
      context.beginPath();
      context.arc(x, y, 1.5 * unit, 0, 2 * Math.PI);
      context.fill();
      context.strokeStyle = "#fff";
      context.stroke();
    });
  }

  // Downloads the chosen mask as a PNG the size of the image, 255 where the object is.
  $("download").addEventListener("click", () => {
    const mask = decodeRle(state.answer.masks[state.chosen].rle);
    const canvas = document.createElement("canvas");
    canvas.width = state.width;
    canvas.height = state.height;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(state.width, state.height);
    for (let i = 0; i < mask.length; i++) {
      const v = mask[i] ? 255 : 0;
      pixels.data.set([v, v, v, 255], i * 4);
    }
    context.putImageData(pixels, 0, 0);
    const link = document.createElement("a");
    link.download = `mask-${state.imageId.slice(0, 12)}-${state.chosen + 1}.png`;
    link.href = canvas.toDataURL("image/png");
    link.click();
  });
})();
