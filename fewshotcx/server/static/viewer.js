// fewshotcx web viewer: NiiVue (vendored, BSD-2) shows the canonical image and the drawing; every
// drawn slice is sent to the server, which keeps the session's state (undo, complete, suggest).
// The slice numbers shown and sent are the file's own (array[:, :, k] of the file, as in ContourSession
// and RemoteSession: docs/geometry.md, "Slice indices"); NiiVue's canonical slice z and plane are mapped
// to them with the session's "axes" (per file axis: [canonical axis, +1 or -1 when reversed]).
// Prompts (box, point, scribble: the Prompt tools) are sent as the file's own voxels (i, j, k) too.
import { Niivue } from "./niivue.js";

const $ = (id) => document.getElementById(id);
const state = { sid: null, info: null, dims: null, axes: null, synced: null, pending: 0, resultVersion: 0,
                overlay: null, queue: Promise.resolve(), tool: "view", sent: [] };
const PROMPT_TOOLS = ["box", "point", "scribble"];
window.fxViewer = state;

const keyInput = $("key");
keyInput.value = sessionStorage.getItem("fewshotcx-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("fewshotcx-key", keyInput.value.trim()));

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(method, path, body, type) {
  const headers = type ? { ...authHeaders(), "Content-Type": type } : authHeaders();
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not ours */ }
    throw new Error(`${detail} (HTTP ${response.status})`);
  }
  return response;
}

// Server actions run one after another (a draw is saved before a complete that follows it); each
// counts as pending from the moment it is asked for, so tests (and users) can see when the page is idle.
function busy(label, action) {
  state.pending += 1;
  document.body.dataset.pending = String(state.pending);
  const run = async () => {
    try {
      return await action();
    } catch (error) {
      say(`${label}: ${error.message}`, true);
      return undefined;
    } finally {
      state.pending -= 1;
      document.body.dataset.pending = String(state.pending);
    }
  };
  const done = state.queue.then(run);
  state.queue = done;
  return done;
}

const nv = new Niivue({ isRadiologicalConvention: true, backColor: [0.1, 0.1, 0.1, 1], show3Dcrosshair: false, isColorbar: false,
                        crosshairColor: [1, 1, 0, 0.35], crosshairWidth: 0.5, logLevel: "warn", dragAndDropEnabled: false });
state.nv = nv;

function sliceSize() { return state.dims[0] * state.dims[1]; }

// The file's own voxel (i, j, k) <-> the canonical voxel NiiVue shows.
function fileVoxel(c) { return state.axes.map(([to, sign]) => (sign > 0 ? c[to] : state.dims[to] - 1 - c[to])); }
function canonicalVoxel(f) {
  const c = [0, 0, 0];
  state.axes.forEach(([to, sign], axis) => { c[to] = sign > 0 ? f[axis] : state.dims[to] - 1 - f[axis]; });
  return c;
}

// Canonical slice z <-> the file's slice k (the file's third axis is the canonical third, maybe reversed).
function fileSlice(z) { return fileVoxel([0, 0, z])[2]; }

// A canonical (X, Y) plane (x fastest) -> the file's own (X, Y) plane (x fastest).
function filePlane(plane) {
  const [fx, fy] = state.info.shape;
  const out = new Uint8Array(fx * fy);
  for (let j = 0; j < fy; j++) {
    for (let i = 0; i < fx; i++) {
      const c = canonicalVoxel([i, j, 0]);
      out[i + j * fx] = plane[c[0] + c[1] * state.dims[0]];
    }
  }
  return out;
}

function currentSlice() {
  const vox = nv.frac2vox(nv.scene.crosshairPos);
  return Math.min(state.dims[2] - 1, Math.max(0, Math.round(vox[2])));
}

// Go to the file's slice k.
function goToSlice(k) {
  const z = fileSlice(Math.min(state.dims[2] - 1, Math.max(0, Math.round(k))));
  nv.moveCrosshairInVox(0, 0, z - currentSlice());
  showSlice();
}

function showSlice() {
  $("slice").value = fileSlice(currentSlice());
}

function showInfo(info) {
  state.info = info;
  $("drawn").textContent = info.drawn.length ? info.drawn.join(", ") : "none";
  $("prompt-count").textContent = String(info.prompts);
  $("download-rtstruct").disabled = !info.dicom;
  $("suggest").disabled = !info.completes_slices;  // a session started by the atlas cannot suggest
  $("suggest").title = info.completes_slices ? "" : "this server's model (atlas) cannot suggest a slice";
}

function setTool(tool) {
  state.tool = tool;
  for (const name of ["view", "brush", "eraser", ...PROMPT_TOOLS]) $(`tool-${name}`).classList.toggle("active", name === tool);
  nv.setDrawingEnabled(tool === "brush" || tool === "eraser");
  nv.opts.penSize = Math.max(1, Number($("pen").value) || 1);
  nv.setPenValue(tool === "eraser" ? 0 : Math.max(1, Number($("label").value) || 1), false);
}

// Send every slice whose drawing changed since the last sync (run through busy()): a drawn slice is PUT (as the file's
// slice), a slice wiped clean that the server holds is erased (forgotten).
async function syncDrawing() {
  const bitmap = nv.drawBitmap;
  const n = sliceSize();
  for (let z = 0; z < state.dims[2]; z++) {
    const now = bitmap.subarray(z * n, (z + 1) * n);
    const before = state.synced.subarray(z * n, (z + 1) * n);
    let changed = false;
    for (let i = 0; i < n; i++) if (now[i] !== before[i]) { changed = true; break; }
    if (!changed) continue;
    const copy = now.slice();
    before.set(copy);
    const empty = !copy.some((v) => v !== 0);
    const k = fileSlice(z);
    if (empty && state.info.drawn.includes(k)) {
      showInfo(await (await api("DELETE", `/sessions/${state.sid}/slices/${k}`)).json());
      say(`slice ${k} erased`);
    } else if (!empty) {
      showInfo(await (await api("PUT", `/sessions/${state.sid}/slices/${k}`, filePlane(copy))).json());
      say(`slice ${k} saved`);
    }
  }
}

// Replace the drawing by the server's drawn slices (after undo, or when opening a session).
async function loadDrawing() {
  const bytes = new Uint8Array(await (await api("GET", `/sessions/${state.sid}/drawing`)).arrayBuffer());
  nv.drawBitmap.set(bytes);
  state.synced = bytes.slice();
  nv.refreshDrawing(true);
}

async function openSession(sid) {
  state.sid = sid;
  const info = await (await api("GET", `/sessions/${sid}`)).json();
  state.dims = info.canonical_shape;
  state.axes = info.axes;
  await nv.loadVolumes([{ url: `/sessions/${sid}/image`, name: "image.nii.gz", headers: authHeaders() }]);
  nv.setSliceType(nv.sliceTypeAxial);
  nv.createEmptyDrawing();
  nv.setDrawOpacity(0.6);
  showInfo(info);
  await loadDrawing();
  const vol = nv.volumes[0];
  $("window").value = (vol.cal_max - vol.cal_min).toPrecision(4);
  $("level").value = ((vol.cal_max + vol.cal_min) / 2).toPrecision(4);
  $("depth").textContent = String(state.dims[2] - 1);
  $("slice").max = String(state.dims[2] - 1);
  goToSlice(Math.floor(state.dims[2] / 2));
  if (info.fitted || info.prompts) await showResult();  // the fitted model's contour, or the prompts' so far
  for (const id of ["controls", "wl", "tools", "prompts", "model", "export"]) $(id).classList.remove("hidden");
  $("open").classList.add("hidden");
  say(`session ${sid}: ${info.name}, ${info.shape.join("×")}`);
  document.body.dataset.ready = "1";
}

function setWindow() {
  const w = Number($("window").value), l = Number($("level").value);
  if (!(w > 0) || !Number.isFinite(l)) return;
  const vol = nv.volumes[0];
  vol.cal_min = l - w / 2;
  vol.cal_max = l + w / 2;
  nv.updateGLVolume();
}

// Show the session's result as the green overlay (run through busy()).
async function showResult() {
  say("completing…");
  state.resultVersion += 1;
  if (state.overlay) { nv.removeVolume(state.overlay); state.overlay = null; }
  const overlay = await nv.addVolumeFromUrl({ url: `/sessions/${state.sid}/result?format=canonical&v=${state.resultVersion}`,
    name: "result.nii.gz", headers: authHeaders(), colormap: "green", opacity: 0.45 });
  overlay.cal_min = 0.5;
  overlay.cal_max = Math.max(1, overlay.global_max || 1);
  nv.updateGLVolume();
  state.overlay = overlay;
  say(`completed (result version ${state.resultVersion})`);
  document.body.dataset.completed = String(state.resultVersion);
}

function complete() { return busy("complete", showResult); }

// After an undo: the result again, or no overlay when nothing is left to show (run through busy()).
async function refreshResult() {
  const { fitted, prompts, drawn } = state.info;
  if (fitted || prompts || drawn.length) return showResult();
  nv.removeVolume(state.overlay);
  state.overlay = null;
}

// ---------------------------------------------------------------- prompts
// Box: drag a rectangle on the slice (with a Depth d > 0: a 3D box over the d slices above and below it
// too, cut to the image). Point: click. Scribble: drag a brush of the Size above. Shift held when the
// mouse goes down makes a point or scribble negative (outside the structure). The marks canvas shows the
// box or stroke while the mouse is down; the result overlay is refreshed after each prompt.
const drag = { tool: null, start: null, last: null, negative: false, voxels: null, path: null };

// The canonical voxel under the mouse on the shown slice, or null outside the image.
function canvasVoxel(e) {
  const rect = nv.canvas.getBoundingClientRect(), dpr = nv.uiData.dpr;
  const frac = nv.canvasPos2frac([(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr]);
  if (frac[0] < 0) return null;
  return Array.from(nv.frac2vox(frac), (v, axis) => Math.min(state.dims[axis] - 1, Math.max(0, v)));
}

// Add the brush disc around canonical voxel c (its slice) to the stroke, and the voxels on the way from the last one.
function brushTo(c) {
  const radius = (Math.max(1, Number($("pen").value) || 1) - 1) / 2, reach = Math.ceil(radius);
  const from = drag.last || c, steps = Math.max(Math.abs(c[0] - from[0]), Math.abs(c[1] - from[1]), 1);
  for (let s = 1; s <= steps; s++) {
    const x0 = Math.round(from[0] + ((c[0] - from[0]) * s) / steps), y0 = Math.round(from[1] + ((c[1] - from[1]) * s) / steps);
    for (let dy = -reach; dy <= reach; dy++) {
      for (let dx = -reach; dx <= reach; dx++) {
        const x = x0 + dx, y = y0 + dy;
        if (dx * dx + dy * dy <= radius * radius && x >= 0 && y >= 0 && x < state.dims[0] && y < state.dims[1]) {
          drag.voxels.add(x + y * state.dims[0]);
        }
      }
    }
  }
  drag.last = c;
}

function showMarks(e) {
  const marks = $("marks"), rect = marks.getBoundingClientRect(), ctx = marks.getContext("2d");
  const x = e.clientX - rect.left, y = e.clientY - rect.top;
  ctx.strokeStyle = drag.negative ? "#f55" : "#ff0";
  ctx.lineWidth = 2;
  if (drag.tool === "box") {
    ctx.clearRect(0, 0, marks.width, marks.height);
    ctx.strokeRect(drag.path[0][0], drag.path[0][1], x - drag.path[0][0], y - drag.path[0][1]);
  } else {
    const [px, py] = drag.path[drag.path.length - 1];
    ctx.beginPath();
    ctx.moveTo(px, py);
    ctx.lineTo(x, y);
    ctx.stroke();
  }
  drag.path.push([x, y]);
}

function promptDown(e) {
  const c = canvasVoxel(e);
  if (!c) return;
  const marks = $("marks"), rect = marks.getBoundingClientRect();
  marks.width = rect.width;
  marks.height = rect.height;
  Object.assign(drag, { tool: state.tool, start: c, last: null, negative: e.shiftKey, voxels: new Set(),
                        path: [[e.clientX - rect.left, e.clientY - rect.top]] });
  if (drag.tool === "scribble") brushTo(c);
}

function promptMove(e) {
  if (!drag.start) return;
  showMarks(e);
  const c = canvasVoxel(e);
  if (!c) return;
  if (drag.tool === "scribble") brushTo([c[0], c[1], drag.start[2]]);
  else drag.last = c;  // where a box ends if the button is released off the image
}

function promptUp(e) {
  if (!drag.start) return;
  const { tool, start, negative, voxels } = drag;
  const end = canvasVoxel(e) || drag.last || start;
  drag.start = null;
  $("marks").getContext("2d").clearRect(0, 0, $("marks").width, $("marks").height);
  const label = Math.max(1, Number($("label").value) || 1);
  if (tool === "point") {
    sendPrompt("point", { ijk: fileVoxel(start), positive: !negative, label });
  } else if (tool === "box") {
    const depth = Math.max(0, Math.floor(Number($("box-depth").value) || 0));
    const a = fileVoxel([start[0], start[1], Math.max(0, start[2] - depth)]);
    const b = fileVoxel([end[0], end[1], Math.min(state.dims[2] - 1, start[2] + depth)]);
    sendPrompt("box", { lo: a.map((v, i) => Math.min(v, b[i])), hi: a.map((v, i) => Math.max(v, b[i])), label });
  } else {
    const n = state.dims[0];
    const own = Array.from(voxels, (v) => fileVoxel([v % n, Math.floor(v / n), start[2]]));
    sendPrompt("scribble", { voxels: own, positive: !negative, label });
  }
}

function sendPrompt(kind, body) {
  return busy(kind, async () => {
    showInfo(await (await api("POST", `/sessions/${state.sid}/${kind}`, JSON.stringify(body), "application/json")).json());
    state.sent.push({ kind, body });
    await showResult();
    say(`${kind} sent (${body.positive === false ? "negative, " : ""}file voxel ${JSON.stringify(body.ijk || body.lo)})`);
  });
}

// While a prompt tool is active, the mouse's left button is ours (NiiVue never sees it); the wheel still
// scrolls. A drag ends where the button is released, on the image or not.
function capturePrompts() {
  const capture = (handler, when) => (e) => {
    if (!when(e)) return;
    e.stopPropagation();
    e.preventDefault();
    handler(e);
  };
  const prompting = () => PROMPT_TOOLS.includes(state.tool) && state.dims !== null;
  $("view").addEventListener("mousedown", capture(promptDown, (e) => prompting() && e.button === 0), true);
  $("view").addEventListener("mousemove", capture(promptMove, prompting), true);
  window.addEventListener("mouseup", capture(promptUp, () => drag.start !== null), true);
}

async function suggest() {
  await busy("suggest", async () => {
    const { slices } = await (await api("GET", `/sessions/${state.sid}/suggest?n=1`)).json();
    const z = slices.length ? slices[0] : null;
    $("suggestion").textContent = z === null ? "none" : String(z);
    $("suggestion").classList.toggle("highlight", z !== null);
    $("goto").classList.toggle("hidden", z === null);
    $("goto").dataset.slice = z === null ? "" : String(z);
  });
}

// Download the result (or, when accepting, the accepted contour) as a file.
async function download(format, accept = false) {
  await busy(accept ? "accept" : "download", async () => {
    const route = `/sessions/${state.sid}/${accept ? "accept" : "result"}?format=${format}`;
    const blob = await (await api(accept ? "POST" : "GET", route)).blob();
    const stem = state.info.name.replace(/\.(nii\.gz|nii|nrrd|zip)$/i, "").split("/").pop();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = format === "rtstruct" ? `${stem}_rtstruct.dcm` : `${stem}_${accept ? "accepted" : "contour"}.nii.gz`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    say(`downloaded ${a.download}`);
  });
}

async function upload(file) {
  await busy("upload", async () => {
    say(`uploading ${file.name}…`);
    const info = await (await api("POST", `/sessions?name=${encodeURIComponent(file.name)}`, file)).json();
    history.replaceState(null, "", `?session=${info.session_id}`);
    await openSession(info.session_id);
  });
}

async function main() {
  await nv.attachTo("gl");
  nv.onLocationChange = () => { if (state.dims) showSlice(); };
  nv.onDrawingChanged = (action) => { if (action === "draw" && state.sid) busy("draw", syncDrawing); };
  $("file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });
  $("prev").onclick = () => goToSlice(fileSlice(currentSlice()) - 1);
  $("next").onclick = () => goToSlice(fileSlice(currentSlice()) + 1);
  $("slice").addEventListener("change", () => goToSlice(Number($("slice").value)));
  $("window").addEventListener("change", setWindow);
  $("level").addEventListener("change", setWindow);
  $("tool-view").onclick = () => setTool("view");
  $("tool-brush").onclick = () => setTool("brush");
  $("tool-eraser").onclick = () => setTool("eraser");
  for (const tool of PROMPT_TOOLS) $(`tool-${tool}`).onclick = () => setTool(tool);
  capturePrompts();
  $("pen").addEventListener("change", () => { nv.opts.penSize = Math.max(1, Number($("pen").value) || 1); });
  $("label").addEventListener("change", () => { if (nv.opts.penValue !== 0) setTool("brush"); });
  $("undo").onclick = () => busy("undo", async () => {
    showInfo(await (await api("POST", `/sessions/${state.sid}/undo`)).json());
    await loadDrawing();
    if (state.overlay) await refreshResult();
    say("undone");
  });
  $("complete").onclick = complete;
  $("suggest").onclick = suggest;
  $("goto").onclick = () => goToSlice(Number($("goto").dataset.slice));
  $("download-nifti").onclick = () => download("nifti");
  $("download-rtstruct").onclick = () => download("rtstruct");
  $("accept").onclick = () => download("nifti", true);
  const sid = new URLSearchParams(location.search).get("session");
  document.body.dataset.pending = "0";
  if (sid) await busy("open", () => openSession(sid));
}

main();
