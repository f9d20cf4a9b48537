// fewshotcx web viewer: NiiVue (vendored, BSD-2) shows the canonical image and the drawing; every
// drawn slice is sent to the server, which keeps the session's state (undo, complete, suggest).
// The slice numbers shown and sent are the file's own (array[:, :, k] of the file, as in ContourSession
// and RemoteSession: docs/geometry.md, "Slice indices"); NiiVue's canonical slice z and plane are mapped
// to them with the session's "axes" (per file axis: [canonical axis, +1 or -1 when reversed]).
import { Niivue } from "./niivue.js";

const $ = (id) => document.getElementById(id);
const state = { sid: null, info: null, dims: null, axes: null, synced: null, pending: 0, resultVersion: 0,
                overlay: null, queue: Promise.resolve() };
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

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: authHeaders(), body });
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

// Canonical slice z <-> the file's slice k (the file's third axis is the canonical third, maybe reversed).
function fileSlice(z) { return state.axes[2][1] > 0 ? z : state.dims[2] - 1 - z; }

// A canonical (X, Y) plane (x fastest) -> the file's own (X, Y) plane (x fastest).
function filePlane(plane) {
  const [fx, fy] = state.info.shape;
  const out = new Uint8Array(fx * fy);
  const c = [0, 0];
  for (let j = 0; j < fy; j++) {
    for (let i = 0; i < fx; i++) {
      [i, j].forEach((f, axis) => {
        const [to, sign] = state.axes[axis];
        c[to] = sign > 0 ? f : state.dims[to] - 1 - f;
      });
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
  $("download-rtstruct").disabled = !info.dicom;
}

function setTool(tool) {
  for (const name of ["view", "brush", "eraser"]) $(`tool-${name}`).classList.toggle("active", name === tool);
  nv.setDrawingEnabled(tool !== "view");
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
  for (const id of ["controls", "wl", "tools", "model", "export"]) $(id).classList.remove("hidden");
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

async function complete() {
  await busy("complete", async () => {
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
  });
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

async function download(format) {
  await busy("download", async () => {
    const blob = await (await api("GET", `/sessions/${state.sid}/result?format=${format}`)).blob();
    const stem = state.info.name.replace(/\.(nii\.gz|nii|nrrd|zip)$/i, "").split("/").pop();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = format === "rtstruct" ? `${stem}_rtstruct.dcm` : `${stem}_contour.nii.gz`;
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
  $("pen").addEventListener("change", () => { nv.opts.penSize = Math.max(1, Number($("pen").value) || 1); });
  $("label").addEventListener("change", () => { if (nv.opts.penValue !== 0) setTool("brush"); });
  $("undo").onclick = () => busy("undo", async () => {
    showInfo(await (await api("POST", `/sessions/${state.sid}/undo`)).json());
    await loadDrawing();
    say("undone");
  });
  $("complete").onclick = complete;
  $("suggest").onclick = suggest;
  $("goto").onclick = () => goToSlice(Number($("goto").dataset.slice));
  $("download-nifti").onclick = () => download("nifti");
  $("download-rtstruct").onclick = () => download("rtstruct");
  const sid = new URLSearchParams(location.search).get("session");
  document.body.dataset.pending = "0";
  if (sid) await busy("open", () => openSession(sid));
}

main();
