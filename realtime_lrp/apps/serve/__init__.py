"""``rtlrp serve``: live LRP explanations in a browser, with the user's camera and the server's device.

One process serves a page (``realtime_lrp/assets/serve.html``, ``serve.js``, ``serve.css``:
no build step, nothing fetched from the internet) and a WebSocket at ``/ws``. The page
sends camera frames, downscaled to the processing size and JPEG-encoded; the server
explains them and sends back the rendered frame with its label. With a server-side
``source`` (kiosk mode) the server explains that camera or file instead and every
connected page just watches.

The protocol on ``/ws`` (numbers are big-endian):

* server → client, text JSON: ``hello`` once (mode, processing size, device, settings,
  limits); ``skipped`` (``id``, ``reason``) for a frame that was not explained because a
  newer one replaced it or the client was over its frame rate; ``error`` (``message``).
* client → server, binary: a 4-byte frame id, then one JPEG image.
* client → server, text JSON: ``{"type": "settings", "method", "preset", "top_k", "cmap",
  "layout", "alpha"}`` (any subset) and ``{"type": "reset"}`` (a new stream: forget the colour
  scale). ``method`` is ``lrp`` or a CAM method (``gradcam``, ``gradcam++``, ``layercam``, read
  at the server's ``--cam-layer``); the ``compare`` layout shows LRP (``preset``) and a CAM
  method (``method``'s, Grad-CAM for ``lrp``) of the same frame side by side, each half exactly
  what that method alone shows, and names them in the result's ``halves``.
* server → client, binary: a 4-byte length L, L bytes of UTF-8 JSON (``id``, ``label``,
  ``server_fps``, ...), then the rendered frame as JPEG.

Flow control: the page keeps one frame in flight, so a slow link drops frames instead of
queueing them. The server keeps only the newest unexplained frame of each client and
only the newest unsent reply (a client that stops reading loses replies, nobody else
waits). One :class:`~realtime_lrp.apps.serve.worker.Worker` thread owns the processor and explains the newest frame of
every client in one batch per (explainer, top-k, ...) group. A message that breaks the protocol
closes that client's connection with a WebSocket close code and a reason; the others go on.
Each client's messages are taken by a task that only checks them (ids, rates) and keeps
the newest frame in one slot; another task decodes it, if the client is still there and
within its decoding budget, so a client that leaves frees its slot at once.

Who gets in: a random token is required on every address, loopback too, as in Jupyter
(``?token=`` in the URL, then a cookie named after the port; the page then drops the token
from its address); without it HTTP requests and WebSocket handshakes get 403. ``--no-token``
turns it off on loopback only. A loopback server also wants a loopback Host header.

Modules: ``protocol`` (messages, limits, close codes), ``jpeg`` (a frame's structure, read
before decoding), ``auth`` (who gets in), ``worker``
(the batching thread), ``kiosk`` (a server-side source), ``app`` (the Starlette application),
``server`` (sockets, uvicorn, shutdown) and ``bench`` (``rtlrp serve-bench``).
"""
