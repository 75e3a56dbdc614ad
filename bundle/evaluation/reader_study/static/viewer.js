// Blinded reader-study page: linked axial/coronal/sagittal views of each candidate, questions, local saving,
// export. No network and no library: data arrive as <script> files (file:// pages cannot fetch()).
// Volumes are uint8, x fastest: index = x + X * (y + Y * z). Views: axial = z slice (x right, y up),
// coronal = y slice (x right, z up), sagittal = x slice (y right, z up).
"use strict";
(function () {
  const S = window.STUDY;
  const STORE = "readerstudy:" + S.study_id;
  // canvas size in CSS pixels: the window's width shared by the panels (see layout()), 200 at the least
  let VIEW = 200;
  const MIN_VIEW = 200, MAX_VIEW = 640;
  const PLANES = ["axial", "coronal", "sagittal"];
  const $ = (id) => document.getElementById(id);

  // ---- persistent state: everything a reload needs -------------------------------------------------------
  let state = load() || { reader: "", current: 0, answers: {}, drafts: {}, elapsed: {}, started: {} };
  function load() {
    try { return JSON.parse(localStorage.getItem(STORE)); } catch (e) { return null; }
  }
  function save() { localStorage.setItem(STORE, JSON.stringify(state)); }

  // ---- viewer state (not persisted beyond the item) ------------------------------------------------------
  const V = { data: null, vols: [], dims: [1, 1, 1], spacing: [1, 1, 1], cursor: [0, 0, 0], centre: [0, 0, 0],
              zoom: 1, window: 255, level: 128, canvases: [] };
  window.VIEWER = V; // read by tests and handy in the console; it holds no method names
  let t0 = null; // when the current item's clock last started

  function decode(b64) {
    const s = atob(b64), a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    return a;
  }

  // plane -> [width axis, height axis, normal axis]
  const AXES = { axial: [0, 1, 2], coronal: [0, 2, 1], sagittal: [1, 2, 0] };
  const OPPOSITE = { R: "L", L: "R", A: "P", P: "A", S: "I", I: "S" };

  // the anatomical direction of each image edge, from the volume's orientation (nibabel's axis codes of its
  // affine, e.g. "RAS": +x points right, +y anterior, +z superior): the right edge shows where the width axis
  // grows, the top edge where the height axis grows (the top row is the highest index), the others the opposite
  function markers(plane) {
    const [a, b] = AXES[plane], codes = V.orientation || "";
    const grow = (axis) => codes[axis] || "", back = (axis) => OPPOSITE[codes[axis]] || "";
    return { right: grow(a), left: back(a), top: grow(b), bottom: back(b) };
  }

  // panels share the window's width (each panel one column of three views); clamped to [MIN_VIEW, MAX_VIEW]
  function layout(nPanels) {
    const avail = document.documentElement.clientWidth || window.innerWidth || 1400;
    const perPanel = (avail - 40) / Math.max(nPanels, 1) - 16 - 2 * 18; // padding; gap; the side markers
    VIEW = Math.max(MIN_VIEW, Math.min(MAX_VIEW, Math.floor(perPanel)));
    for (const { canvas } of V.canvases) {
      canvas.width = canvas.height = VIEW;
      canvas.style.width = canvas.style.height = VIEW + "px";
    }
  }

  function sliceImage(vol, plane) {
    const [X, Y] = V.dims, [a, b, n] = AXES[plane];
    const W = V.dims[a], H = V.dims[b], img = new ImageData(W, H);
    const lo = V.level - V.window / 2, k = 255 / Math.max(V.window, 1e-3);
    const idx = [0, 0, 0];
    idx[n] = V.cursor[n];
    for (let r = 0; r < H; r++) {
      idx[b] = H - 1 - r; // the top row is the highest index (superior / anterior up)
      for (let c = 0; c < W; c++) {
        idx[a] = c;
        const v = vol[idx[0] + X * (idx[1] + Y * idx[2])];
        const g = Math.max(0, Math.min(255, (v - lo) * k));
        const o = 4 * (r * W + c);
        img.data[o] = img.data[o + 1] = img.data[o + 2] = g;
        img.data[o + 3] = 255;
      }
    }
    return img;
  }

  // the placement of a plane on its canvas: pixels per voxel along each axis and the top-left offset
  function geometry(plane) {
    const [a, b] = AXES[plane];
    const w = V.dims[a] * V.spacing[a], h = V.dims[b] * V.spacing[b];
    const f = Math.min(VIEW / w, VIEW / h) * V.zoom;
    const pa = f * V.spacing[a], pb = f * V.spacing[b];
    const ox = VIEW / 2 - (V.centre[a] + 0.5) * pa;
    const oy = VIEW / 2 - (V.dims[b] - 0.5 - V.centre[b]) * pb;
    return { a, b, pa, pb, ox, oy };
  }

  function draw() {
    for (const { canvas, vol, plane, label } of V.canvases) {
      const ctx = canvas.getContext("2d"), g = geometry(plane);
      const img = sliceImage(vol, plane);
      const off = document.createElement("canvas");
      off.width = img.width; off.height = img.height;
      off.getContext("2d").putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.fillStyle = "#000"; ctx.fillRect(0, 0, VIEW, VIEW);
      ctx.drawImage(off, g.ox, g.oy, img.width * g.pa, img.height * g.pb);
      const cx = g.ox + (V.cursor[g.a] + 0.5) * g.pa, cy = g.oy + (V.dims[g.b] - 0.5 - V.cursor[g.b]) * g.pb;
      ctx.strokeStyle = "rgba(255,200,0,0.7)"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(cx, 0); ctx.lineTo(cx, VIEW); ctx.moveTo(0, cy); ctx.lineTo(VIEW, cy); ctx.stroke();
      // the slice label sits above the image, outside it (not drawn on the canvas)
      label.textContent = plane + " " + (V.cursor[AXES[plane][2]] + 1) + "/" + V.dims[AXES[plane][2]];
    }
    $("cursor-pos").textContent = "cursor " + V.cursor.map((c) => c + 1).join(", ");
    $("window").value = V.window; $("level").value = V.level;
  }

  const clamp = (v, n) => Math.max(0, Math.min(n - 1, v));

  function setCursorFromEvent(ev, plane) {
    const g = geometry(plane), r = ev.target.getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    V.cursor[g.a] = clamp(Math.floor((x - g.ox) / g.pa), V.dims[g.a]);
    V.cursor[g.b] = clamp(V.dims[g.b] - 1 - Math.floor((y - g.oy) / g.pb), V.dims[g.b]);
    draw();
  }

  function setZoom(z) {
    V.zoom = Math.max(1, Math.min(8, z));
    V.centre = V.zoom > 1 ? V.cursor.slice() : V.dims.map((d) => (d - 1) / 2);
    draw();
  }

  function attach(canvas, plane) {
    let wl = null;
    canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
    canvas.addEventListener("mousedown", (ev) => {
      if (ev.button === 2) { wl = { x: ev.clientX, y: ev.clientY, w: V.window, l: V.level }; return; }
      setCursorFromEvent(ev, plane);
    });
    canvas.addEventListener("mousemove", (ev) => {
      if (wl) {
        V.window = Math.max(1, Math.min(255, Math.round(wl.w + (ev.clientX - wl.x))));
        V.level = Math.max(0, Math.min(255, Math.round(wl.l - (ev.clientY - wl.y))));
        draw();
      } else if (ev.buttons === 1) setCursorFromEvent(ev, plane);
    });
    window.addEventListener("mouseup", () => { wl = null; });
    canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const step = ev.deltaY > 0 ? -1 : 1;
      if (ev.shiftKey || ev.ctrlKey) { setZoom(V.zoom * (step > 0 ? 1.25 : 0.8)); return; }
      const n = AXES[plane][2];
      V.cursor[n] = clamp(V.cursor[n] + step, V.dims[n]);
      draw();
    }, { passive: false });
  }

  function buildPanels(item) {
    const panels = $("panels");
    panels.innerHTML = "";
    V.canvases = [];
    const shown = item.labels.map((label, i) => ({ title: label, vol: V.vols[i], cls: "candidate" }));
    if (V.ref) shown.push({ title: "Reference", vol: V.ref, cls: "reference" });
    for (const p of shown) {
      const div = document.createElement("div");
      div.className = "panel " + p.cls;
      div.innerHTML = "<h2></h2><div class='views'></div>";
      div.querySelector("h2").textContent = p.title;
      for (const plane of PLANES) {
        // a 3 x 3 grid: the slice label on top, the orientation markers on the four edges, the image inside
        const cell = document.createElement("div");
        cell.className = "view-cell";
        const id = p.title + "-" + plane;
        const label = document.createElement("div");
        label.className = "slice-label"; label.id = "label-" + id;
        cell.appendChild(label);
        const m = markers(plane);
        for (const edge of ["top", "left", "right", "bottom"]) {
          const e = document.createElement("span");
          e.className = "marker " + edge; e.id = "marker-" + id + "-" + edge; e.textContent = m[edge];
          cell.appendChild(e);
        }
        const c = document.createElement("canvas");
        c.width = c.height = VIEW; c.className = "view " + plane;
        c.id = "view-" + id;
        cell.appendChild(c);
        div.querySelector(".views").appendChild(cell);
        attach(c, plane);
        V.canvases.push({ canvas: c, vol: p.vol, plane, label });
      }
      panels.appendChild(div);
    }
    layout(shown.length);
  }

  // ---- questions -----------------------------------------------------------------------------------------
  function questions() { return S.questions; }

  function buildForm(item) {
    const form = $("questions");
    form.innerHTML = "";
    const draft = state.drafts[item.item] || {};
    const many = item.labels.length > 2; // "sharper"/"neither" ask of two; three or more need "sharpest"/"none"
    for (const q of questions()) {
      const fs = document.createElement("fieldset");
      fs.dataset.qid = q.id;
      const lg = document.createElement("legend");
      lg.textContent = many && q.text_many ? q.text_many : q.text;
      fs.appendChild(lg);
      const radio = (name, value, text, checked) => {
        const l = document.createElement("label"), r = document.createElement("input");
        r.type = "radio"; r.name = name; r.value = value; r.checked = checked;
        r.addEventListener("change", () => record(item));
        l.appendChild(r); l.appendChild(document.createTextNode(" " + text)); fs.appendChild(l);
      };
      if (q.type === "choice") {
        for (const lab of item.labels) radio(q.id, lab, lab, draft[q.id] === lab);
        const none = many && q.none_many ? q.none_many : q.none; // "neither" only where two are shown
        if (none) radio(q.id, "none", none, draft[q.id] === "none");
      } else if (q.type === "likert") {
        for (const lab of item.labels) {
          const row = document.createElement("div");
          row.appendChild(document.createTextNode(lab + ": " + (q.low || "") + " "));
          fs.appendChild(row);
          for (let s = 1; s <= q.scale; s++) {
            const l = document.createElement("label"), r = document.createElement("input");
            r.type = "radio"; r.name = q.id + ":" + lab; r.value = String(s);
            r.checked = draft[q.id] && draft[q.id][lab] === s;
            r.addEventListener("change", () => record(item));
            l.appendChild(r); l.appendChild(document.createTextNode(" " + s)); row.appendChild(l);
          }
          row.appendChild(document.createTextNode(" " + (q.high || "")));
        }
      } else {
        const t = document.createElement("textarea");
        t.name = q.id; t.value = draft[q.id] || "";
        t.addEventListener("input", () => record(item));
        fs.appendChild(t);
      }
      form.appendChild(fs);
    }
  }

  function readForm(item) {
    const form = $("questions"), out = {};
    for (const q of questions()) {
      if (q.type === "choice") {
        const r = form.querySelector("input[name='" + q.id + "']:checked");
        if (r) out[q.id] = r.value;
      } else if (q.type === "likert") {
        const vals = {};
        for (const lab of item.labels) {
          const r = form.querySelector("input[name='" + q.id + ":" + lab + "']:checked");
          if (r) vals[lab] = Number(r.value);
        }
        if (Object.keys(vals).length) out[q.id] = vals;
      } else {
        const t = form.querySelector("textarea[name='" + q.id + "']");
        if (t && t.value) out[q.id] = t.value;
      }
    }
    return out;
  }

  function missing(item, ans) {
    return questions().filter((q) => q.required && (q.type === "likert"
      ? !ans[q.id] || item.labels.some((l) => !(l in ans[q.id])) : !(q.id in ans))).map((q) => q.text);
  }

  function tick(item) { // add the time since t0 to the item's clock
    if (t0 === null || !item) return;
    const now = Date.now();
    state.elapsed[item.item] = (state.elapsed[item.item] || 0) + (now - t0) / 1000;
    t0 = now;
  }

  function record(item) { // every answer is saved the moment it is given
    tick(item);
    state.drafts[item.item] = readForm(item);
    save();
  }

  function next() {
    const item = S.items[state.current];
    const ans = readForm(item), miss = missing(item, ans);
    if (miss.length) { $("missing").textContent = "Please answer: " + miss.join("; "); return; }
    tick(item);
    state.answers[item.item] = {
      item: item.item, case: item.case, answers: ans, time_s: Math.round(state.elapsed[item.item] * 10) / 10,
      started_at: state.started[item.item], answered_at: new Date().toISOString(),
    };
    delete state.drafts[item.item];
    state.current += 1;
    save();
    show();
  }

  // ---- item loading and navigation -----------------------------------------------------------------------
  window.STUDY_ITEM = function (data) {
    const item = S.items[state.current];
    if (!item || data.item !== item.item) return;
    V.data = data;
    V.dims = data.dims; V.spacing = data.spacing; V.orientation = data.orientation || "";
    V.vols = data.volumes.map(decode);
    V.ref = data.reference ? decode(data.reference) : null;
    V.cursor = V.dims.map((d) => Math.floor(d / 2));
    V.zoom = 1; V.centre = V.dims.map((d) => (d - 1) / 2);
    V.window = 255; V.level = 128;
    buildPanels(item);
    buildForm(item);
    draw();
    V.ready = item.item;
  };

  function show() {
    $("progress").textContent = "";
    $("reader-label").textContent = state.reader ? "Reader: " + state.reader : "";
    $("start").hidden = !!state.reader;
    const finished = state.current >= S.items.length;
    $("case").hidden = !state.reader || finished;
    $("done").hidden = !state.reader || !finished;
    if (!state.reader || finished) { t0 = null; return; }
    const item = S.items[state.current];
    $("progress").textContent = "Case " + (state.current + 1) + " of " + S.items.length;
    $("missing").textContent = "";
    if (!state.started[item.item]) { state.started[item.item] = new Date().toISOString(); save(); }
    t0 = Date.now();
    V.ready = null;
    const old = document.getElementById("item-data");
    if (old) old.remove();
    const s = document.createElement("script");
    s.id = "item-data"; s.src = "items/" + item.item + ".js";
    document.body.appendChild(s);
  }

  function exportAnswers() {
    const item = S.items[state.current];
    if (item) record(item);
    const out = {
      format: S.format, study_id: S.study_id, case_list_sha256: S.case_list_sha256, reader: state.reader,
      exported_at: new Date().toISOString(), complete: state.current >= S.items.length,
      answers: S.items.filter((it) => state.answers[it.item]).map((it) => state.answers[it.item]),
    };
    const blob = new Blob([JSON.stringify(out, null, 1)], { type: "application/json" });
    const a = document.createElement("a");
    const safe = (state.reader || "reader").replace(/[^A-Za-z0-9_-]+/g, "_");
    a.href = URL.createObjectURL(blob);
    a.download = "answers_" + safe + "_" + S.study_id.slice(0, 8) + ".json";
    document.body.appendChild(a); a.click(); a.remove();
    return out;
  }

  // ---- wiring --------------------------------------------------------------------------------------------
  document.title = S.title;
  $("title").textContent = S.title;
  $("begin").addEventListener("click", () => {
    const name = $("reader").value.trim();
    if (!name) { $("reader").focus(); return; }
    state.reader = name; save(); show();
  });
  $("next").addEventListener("click", next);
  $("export").addEventListener("click", exportAnswers);
  $("zoom-in").addEventListener("click", () => setZoom(V.zoom * 1.5));
  $("zoom-out").addEventListener("click", () => setZoom(V.zoom / 1.5));
  $("reset").addEventListener("click", () => {
    V.window = 255; V.level = 128; V.cursor = V.dims.map((d) => Math.floor(d / 2)); setZoom(1);
  });
  $("window").addEventListener("input", (ev) => { V.window = Number(ev.target.value); draw(); });
  $("level").addEventListener("input", (ev) => { V.level = Number(ev.target.value); draw(); });
  window.addEventListener("resize", () => {
    if (!V.canvases.length) return;
    layout(V.canvases.length / PLANES.length); draw();
  });
  const pause = () => { tick(S.items[state.current]); save(); };
  window.addEventListener("beforeunload", pause);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { pause(); t0 = null; } else if (t0 === null && state.reader) t0 = Date.now();
  });
  show();
})();
