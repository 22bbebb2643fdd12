// rtlrp serve: the page. Frames from the camera (or a picked file) go to the server at its
// processing size as JPEG, one at a time; explained frames come back with their label.
// window.rtlrpState holds what the page shows, for people reading the console and for tests.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOP_K = [0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1];
  const RECONNECT = new Set([1001, 1006, 1011, 1012, 1013]);
  const METHOD_NAMES = {lrp: 'LRP', gradcam: 'Grad-CAM', 'gradcam++': 'Grad-CAM++', layercam: 'LayerCAM'};
  const state = window.rtlrpState = {
    connected: false, mode: null, source: null, framesSent: 0, framesReceived: 0, skipped: 0,
    label: '', size: null, latencyMs: null, serverFps: null, clientFps: null, device: '', message: '',
    cameraError: null, closed: null, snapshots: 0, settings: null, tokenDropped: false, halves: null,
  };
  const token = new URLSearchParams(location.search).get('token');
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws` +
    (token ? `?token=${encodeURIComponent(token)}` : '');
  // The token came with the address; once the cookie the page was served with works, drop it from the
  // address bar (and so from the history, bookmarks and screen shares). Without cookies it stays.
  if (token) {
    fetch('/stats', {credentials: 'same-origin', cache: 'no-store'}).then((response) => {
      if (!response.ok) return;
      const params = new URLSearchParams(location.search);
      params.delete('token');
      const query = params.toString();
      history.replaceState(history.state, '', location.pathname + (query ? `?${query}` : '') + location.hash);
      state.tokenDropped = true;
    }).catch(() => {});
  }

  const out = $('out');
  const outCtx = out.getContext('2d');
  const sendCanvas = document.createElement('canvas');
  let ws = null;
  let hello = null;
  let settings = null;
  let source = null;        // {kind: 'camera' | 'video' | 'image', el, name, stream?, url?}
  let inFlight = null;      // {id, sentAt}: at most one frame on its way
  let stillPending = false; // an image is sent once, and again after each change
  let nextId = 1;
  let lastSend = 0;
  let pumpTimer = null;
  let retryDelay = 1000;
  let idleClosed = false;   // closed for idleness: connect again when there is something to send
  const latencies = [];
  const arrivals = [];

  function showMessage(text, kind = 'error') {
    state.message = text;
    const box = $('message');
    box.textContent = text;
    box.className = kind;
    box.hidden = !text;
  }

  function median(values) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  // -- connection ------------------------------------------------------------------------
  function connect() {
    ws = new WebSocket(wsUrl);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => { state.connected = true; retryDelay = 1000; };
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') onText(JSON.parse(event.data));
      else onResult(event.data);
    };
    ws.onclose = (event) => {
      state.connected = false;
      state.closed = {code: event.code, reason: event.reason};
      inFlight = null;
      idleClosed = event.code === 1000;
      if (idleClosed) {
        showMessage('The server closed the connection after a while without frames; it reconnects when ' +
                    'there is a frame to send (pick an image, change a setting, or use the camera).', 'info');
      } else if (!hello && event.code === 1006) {
        showMessage('The server refused this page or cannot be reached. Open the URL with ?token=… that ' +
                    'rtlrp serve printed when it started.');
      } else {
        showMessage(`The connection closed (${event.code}${event.reason ? ': ' + event.reason : ''}).` +
                    (RECONNECT.has(event.code) ? ' Reconnecting…' : ''));
      }
      if (RECONNECT.has(event.code)) {
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(10000, retryDelay * 2);
      }
    };
  }

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function onText(message) {
    if (message.type === 'hello') {
      setUp(message);
    } else if (message.type === 'skipped') {
      state.skipped += 1;
      if (inFlight && inFlight.id === message.id) inFlight = null;
      schedule(0);
    } else if (message.type === 'error') {
      showMessage(`The server could not explain the frame: ${message.message}`);
      inFlight = null;
      schedule(1000);
    }
  }

  function onResult(buffer) {
    const headLength = new DataView(buffer).getUint32(0);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headLength)));
    const now = performance.now();
    if (inFlight && inFlight.id === meta.id) {
      latencies.push(now - inFlight.sentAt);
      if (latencies.length > 30) latencies.shift();
      inFlight = null;
    }
    arrivals.push(now);
    if (arrivals.length > 30) arrivals.shift();
    state.framesReceived += 1;
    state.label = meta.label;
    state.size = [meta.width, meta.height];
    state.serverFps = meta.server_fps;
    state.latencyMs = median(latencies);
    state.clientFps = arrivals.length > 1 ? 1000 * (arrivals.length - 1) / (now - arrivals[0]) : null;
    showStats();
    if (state.message.startsWith('The server could not explain')) showMessage('');
    const blob = new Blob([new Uint8Array(buffer, 4 + headLength)], {type: 'image/jpeg'});
    createImageBitmap(blob).then((bitmap) => { draw(bitmap, meta); bitmap.close(); });
    schedule(0);
  }

  // -- showing results -------------------------------------------------------------------
  const panels = (layout) => (layout === 'side' || layout === 'compare' ? 2 : 1);

  function sourceAspect(meta) {
    const el = source && source.el;
    if (el && el.videoWidth) return el.videoWidth / el.videoHeight;
    if (el && el.naturalWidth) return el.naturalWidth / el.naturalHeight;
    return meta.width / panels(meta.layout) / meta.height;
  }

  function draw(bitmap, meta) {
    // Sent frames are squeezed to the processing size; shown, they get the source's shape back.
    const height = Math.max(360, Math.min(540, bitmap.height));
    const width = Math.round(height * sourceAspect(meta)) * panels(meta.layout);
    if (out.width !== width || out.height !== height) { out.width = width; out.height = height; }
    const small = bitmap.height < 128;  // show a small model's pixels as they are
    out.classList.toggle('pixelated', small);
    outCtx.imageSmoothingEnabled = !small;
    outCtx.drawImage(bitmap, 0, 0, width, height);
    state.halves = meta.halves ? meta.halves.map((h) => h.title) : null;
    if (meta.halves) {  // the compare layout: name each half at its foot
      outCtx.font = '600 17px system-ui, sans-serif';
      meta.halves.forEach((half, i) => {
        const x = i * width / 2 + 8;
        outCtx.fillStyle = 'rgba(0, 0, 0, 0.6)';
        outCtx.fillRect(x - 6, height - 30, outCtx.measureText(half.title).width + 12, 24);
        outCtx.fillStyle = '#fff';
        outCtx.fillText(half.title, x, height - 12);
      });
    }
    $('label').textContent = meta.label;
    $('snapshot').disabled = false;
  }

  function showStats() {
    const fps = (v) => (v === null || v === undefined ? '–' : `${v.toFixed(1)} frames/s`);
    $('server-fps').textContent = fps(state.serverFps);
    $('client-fps').textContent = fps(state.clientFps);
    $('latency').textContent = state.latencyMs === null ? '–' : `${Math.round(state.latencyMs)} ms`;
  }

  // -- controls --------------------------------------------------------------------------
  function fill(select, values, labels = {}) {
    select.replaceChildren(...values.map((v) => new Option(labels[v] || v, v)));
  }

  function setUp(message) {
    hello = message;
    settings = {...message.settings};
    state.mode = message.mode;
    state.device = message.device;
    state.settings = settings;
    $('model').textContent = message.model;
    $('device').textContent = message.device;
    fill($('method'), message.methods, METHOD_NAMES);
    fill($('preset'), message.presets);
    fill($('cmap'), ['', ...message.cmaps], {'': 'default (by method)'});
    fill($('layout'), message.layouts, {compare: 'compare: LRP | CAM'});
    showSettings();
    if (message.mode === 'kiosk') {
      $('sources').hidden = true;
      $('settings').disabled = true;
      $('kiosk').hidden = false;
      $('kiosk').textContent = `This server explains its own source (${message.source}) for everyone who ` +
                               'connects; its settings are fixed on the server.';
      return;
    }
    if (source) {
      send({type: 'settings', ...settings});
      send({type: 'reset'});
      stillPending = true;
      schedule(0);
    } else {
      startCamera();
    }
  }

  function showSettings() {
    $('method').value = settings.method;
    $('preset').value = settings.preset;
    $('preset').disabled = settings.method !== 'lrp' && settings.layout !== 'compare';
    $('top-k').disabled = $('preset').disabled;
    $('cmap').value = settings.cmap || '';
    $('layout').value = settings.layout;
    const k = TOP_K.reduce((best, v, i) => (Math.abs(v - settings.top_k) < Math.abs(TOP_K[best] - settings.top_k) ? i : best), 0);
    $('top-k').value = k;
    $('top-k-value').textContent = settings.top_k === 0 || settings.top_k === 1 ? 'off' : `${+(settings.top_k * 100).toFixed(2)} %`;
    $('alpha').value = settings.alpha;
    $('alpha-value').textContent = Number(settings.alpha).toFixed(2);
  }

  function changed() {
    settings = {
      method: $('method').value, preset: $('preset').value, top_k: TOP_K[Number($('top-k').value)], cmap: $('cmap').value || null,
      layout: $('layout').value, alpha: Number($('alpha').value),
    };
    state.settings = settings;
    showSettings();
    send({type: 'settings', ...settings});
    stillPending = true;
    schedule(0);
  }
  for (const id of ['method', 'preset', 'top-k', 'cmap', 'layout', 'alpha']) $(id).addEventListener('input', changed);

  $('snapshot').addEventListener('click', () => {
    const bar = 34;
    const canvas = document.createElement('canvas');
    canvas.width = out.width;
    canvas.height = out.height + bar;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#16181c';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(out, 0, 0);
    ctx.fillStyle = '#fff';
    ctx.font = '18px system-ui, sans-serif';
    const how = settings.method === 'lrp' || settings.layout === 'compare'
      ? `${settings.preset}, top-k ${settings.top_k}` : METHOD_NAMES[settings.method];
    ctx.fillText(`${state.label}   ${how}`, 8, out.height + 23);
    canvas.toBlob((blob) => {
      const link = document.createElement('a');
      link.href = URL.createObjectURL(blob);
      link.download = `rtlrp-${new Date().toISOString().replace(/[:.]/g, '-')}.png`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 5000);
      state.snapshots += 1;
    }, 'image/png');
  });

  // -- sources ---------------------------------------------------------------------------
  function stopSource() {
    if (!source) return;
    if (source.stream) source.stream.getTracks().forEach((t) => t.stop());
    if (source.url) URL.revokeObjectURL(source.url);
    const video = $('video');
    video.pause();
    video.srcObject = null;
    video.removeAttribute('src');
    source = null;
    state.source = null;
  }

  function setSource(next) {
    source = next;
    state.source = next.kind;
    $('source-name').textContent = next.name;
    send({type: 'reset'});  // a new stream: the server forgets the colour scale
    stillPending = true;
    inFlight = null;
    schedule(0);
  }

  async function startCamera() {
    stopSource();
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      state.cameraError = 'insecure';
      showMessage('Browsers give the camera only to secure pages. Open this page as http://localhost:PORT ' +
                  'through an SSH tunnel (ssh -L PORT:localhost:PORT SERVER), or start the server with ' +
                  '--tls CERT KEY and open it over https. You can still pick a video or image file.');
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({audio: false, video: {width: {ideal: 640}, height: {ideal: 480}}});
      const video = $('video');
      video.srcObject = stream;
      await video.play();
      const track = stream.getVideoTracks()[0];
      state.cameraError = null;
      showMessage('');
      setSource({kind: 'camera', el: video, stream, name: `camera: ${track ? track.label : ''}`});
    } catch (err) {
      state.cameraError = err.name;
      const why = {
        NotAllowedError: 'Camera access was denied. Allow the camera for this page (the camera icon in the ' +
                         'address bar), then press "Use camera"; or pick a video or image file.',
        NotFoundError: 'No camera was found. Pick a video or image file instead.',
        NotReadableError: 'The camera is busy (another program is using it).',
      }[err.name];
      showMessage(why || `The camera could not be opened (${err.name}: ${err.message}).`);
    }
  }
  $('camera').addEventListener('click', startCamera);

  $('file').addEventListener('change', () => {
    const file = $('file').files[0];
    if (!file) return;
    stopSource();
    const url = URL.createObjectURL(file);
    if (file.type.startsWith('image/')) {
      const img = new Image();
      img.onload = () => { showMessage(''); setSource({kind: 'image', el: img, url, name: file.name}); };
      img.onerror = () => showMessage(`${file.name} is not an image this browser can read.`);
      img.src = url;
      return;
    }
    const video = $('video');
    video.loop = true;
    video.src = url;
    video.play()
      .then(() => { showMessage(''); setSource({kind: 'video', el: video, url, name: file.name}); })
      .catch((err) => showMessage(`${file.name} cannot be played by this browser (${err.name}).`));
  });

  // -- sending ---------------------------------------------------------------------------
  function ready() {
    const el = source && source.el;
    if (!el) return false;
    if (source.kind === 'image') return el.complete && el.naturalWidth > 0;
    return el.readyState >= 2 && el.videoWidth > 0;
  }

  function schedule(delay) {
    if (pumpTimer !== null) {
      if (delay > 0) return;
      clearTimeout(pumpTimer);
    }
    pumpTimer = setTimeout(() => { pumpTimer = null; pump(); }, delay);
  }

  function pump() {
    if (idleClosed && source && ws && ws.readyState === WebSocket.CLOSED) {
      idleClosed = false;
      hello = null;
      connect();  // its hello sends the settings and the source's frame again
      return;
    }
    if (!ws || ws.readyState !== WebSocket.OPEN || !hello || hello.mode !== 'camera' || !source) return;
    const now = performance.now();
    if (inFlight) {
      if (now - inFlight.sentAt < 10000) return schedule(10000 - (now - inFlight.sentAt));
      inFlight = null;  // its reply was lost: send again
    }
    if (!ready()) return schedule(100);
    if (source.kind === 'image' && !stillPending) return;
    const wait = lastSend + 1000 / hello.max_fps - now;
    if (wait > 0) return schedule(wait);
    sendFrame();
  }

  function sendFrame() {
    const [w, h] = hello.size;
    sendCanvas.width = w;
    sendCanvas.height = h;
    sendCanvas.getContext('2d').drawImage(source.el, 0, 0, w, h);
    const id = nextId++;
    const frame = {id, sentAt: performance.now()};
    inFlight = frame;
    lastSend = frame.sentAt;
    stillPending = false;
    sendCanvas.toBlob(async (blob) => {
      const jpeg = new Uint8Array(await blob.arrayBuffer());
      const body = new Uint8Array(4 + jpeg.length);
      new DataView(body.buffer).setUint32(0, id);
      body.set(jpeg, 4);
      if (inFlight !== frame || !ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(body);
      state.framesSent += 1;
      schedule(10000);
    }, 'image/jpeg', 0.9);
  }

  connect();
})();
