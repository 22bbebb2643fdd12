"""Planted bugs: each one must make the tests written to catch it fail.

A developer's check of the test suite, beside mutation testing (README, "Development"); it does
not run in CI. Each plant is an exact text replacement in one module, modelled on a bug a test
once let through. The runner copies the tracked files into a temporary directory, plants one
bug there (the working tree is never touched), runs the named tests against the copy and
reports whether they failed::

    python tests/planted_bugs.py            # all plants
    python tests/planted_bugs.py --list
    python tests/planted_bugs.py filter-keeps-random writer-drops-last

It exits 1 when a plant passes its tests (a weak test) or its text no longer matches the source
(a stale plant, to update with the code).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plant:
    """One bug: replace ``old`` by ``new`` in ``path`` (and each pair of ``more``); ``tests`` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    more: tuple[tuple[str, str], ...] = ()


PLANTS: tuple[Plant, ...] = (
    Plant("filter-keeps-random", "realtime_lrp/lrp/filter.py",
          "torch.threshold(row, cut, 0.0, out=dst)",
          "dst.copy_(row * (torch.rand_like(row).argsort().argsort() < max(1, int(0.02 * len(row)))))",
          ("tests/test_engine.py::test_filter_changes_map_and_keeps_top_values",)),
    Plant("filter-all-drops-smallest", "realtime_lrp/lrp/filter.py",
          "k = max(1, int(self.top_k * flat.shape[1]))",
          "k = max(1, min(int(self.top_k * flat.shape[1]), flat.shape[1] - 1))",
          ("tests/test_engine.py::test_filter_equals_topk_scatter",)),
    Plant("augment-zeros", "realtime_lrp/apps/train/loop.py",
          "return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)",
          "return torch.zeros_like(images)",
          ("tests/test_training.py::test_augment_keeps_shape_and_content",)),
    Plant("training-never-steps", "realtime_lrp/apps/train/loop.py",
          "            loss.backward()\n            optimizer.step()",
          "            optimizer.step()\n            loss.backward()",
          ("tests/test_training.py::test_a_short_run_on_fashion_mnist_learns",)),
    Plant("all-reduce-races-exit", "realtime_lrp/apps/train/loop.py",
          "    if t.device.type != \"cpu\":\n        return",
          "    return",
          ("tests/test_training.py::test_all_reduce_returns_only_after_gloo_lets_go_of_the_tensor",)),
    Plant("writer-drops-last", "realtime_lrp/media/writer.py",
          "            self._container.mux(self._stream.encode(video))\n",
          "            held, self._held = getattr(self, '_held', None), video\n"
          "            if held is not None:\n"
          "                self._container.mux(self._stream.encode(held))\n",
          ("tests/test_live.py::test_webcam_headless_on_a_file_records_a_playable_video",
           "tests/test_live.py::test_sigint_closes_the_recording_and_exits_130",
           "tests/test_video.py::test_sigint_keeps_the_frames_done_playable_beside_the_output"),
          more=(("            self._container.mux(self._stream.encode(None))\n",
                 "            self.frames -= getattr(self, '_held', None) is not None\n"
                 "            self._container.mux(self._stream.encode(None))\n"),)),
    Plant("recorder-skips-last-shown", "realtime_lrp/apps/live.py",
          "now, at_least_once=True, frame=frame)",
          "now, at_least_once=False, frame=frame)",
          ("tests/test_live.py::test_webcam_headless_on_a_file_records_a_playable_video",
           "tests/test_live.py::test_closing_the_window_ends_the_loop_and_closes_the_recording")),
    Plant("video-drops-batch-in-flight", "realtime_lrp/apps/video.py",
          "                rendered, _ = processor.process([f.image for f in frames])\n",
          "                rendered, _ = processor.process([f.image for f in frames])\n"
          "                if stop.requested:\n"
          "                    break\n",
          ("tests/test_video.py::test_sigint_keeps_the_frames_done_playable_beside_the_output",)),
    Plant("writer-takes-rgb", "realtime_lrp/media/writer.py",
          'np.ascontiguousarray(frame), format="bgr24")', "np.ascontiguousarray(frame))",
          ("tests/test_videoio.py::test_colours_survive_the_round_trip",)),
    Plant("hot-map-in-rgb-order", "realtime_lrp/pipeline/render.py",
          "return cv2.applyColorMap(ramp, code).reshape(256, 3).copy()",
          "return cv2.applyColorMap(ramp, code).reshape(256, 3)[:, ::-1].copy()",
          ("tests/test_render.py::test_hot_colours_are_opencvs_hot_map",)),
    Plant("diverging-anchor-moved", "realtime_lrp/pipeline/render.py",
          "(0.20, (50, 110, 220))", "(0.25, (50, 110, 220))",
          ("tests/test_render.py::test_diverging_colours_are_the_anchors",)),
    Plant("gray-weights-reversed", "realtime_lrp/pipeline/preprocess.py",
          "GRAY_WEIGHTS = (0.114, 0.587, 0.299)", "GRAY_WEIGHTS = (0.299, 0.587, 0.114)",
          ("tests/test_render.py::test_preprocess_whole_frame_gray_and_rgb",
           "tests/test_fast.py::test_fast_gray_conversion_uses_bt601_weights_on_bgr")),
    Plant("bgr-reaches-the-model", "realtime_lrp/pipeline/preprocess.py",
          "x = x.flip(1)  # BGR → RGB", "x = x  # BGR → RGB",
          ("tests/test_render.py::test_preprocess_whole_frame_gray_and_rgb",)),
    Plant("heatmap-ignores-scale", "realtime_lrp/pipeline/render.py",
          "heat = colour(r, scale, lut, centered)", "heat = colour(r, torch.ones_like(scale), lut, centered)",
          ("tests/test_render.py::test_layouts_sizes_and_label",)),
    Plant("bench-engine-times-floor", "realtime_lrp/apps/bench.py",
          'engine_ms = ms[f"engine {top_k}"]', 'engine_ms = ms["floor"]',
          ("tests/test_bench.py::test_rows_have_the_keys_and_consistent_ratios",)),
    Plant("bench-decode-counts-kept", "realtime_lrp/apps/bench.py",
          "decode_fps = count / seconds if", "decode_fps = len(frames) / seconds if",
          ("tests/test_bench.py::test_video_stages_and_end_to_end",)),
    Plant("cli-error-two-lines", "realtime_lrp/cli/bench.py",
          "unknown preset {unknown[0]!r}; choose from", "unknown preset {unknown[0]!r};\\nchoose from",
          ("tests/test_bench.py::test_cli_errors_are_one_line",)),
    Plant("fps-times-arrivals", "realtime_lrp/apps/live.py",
          "        rendered, preds = self.processor.process([image])\n"
          "        now = time.monotonic()\n"
          "        self.meter.tick(now)\n",
          "        self.meter.tick(time.monotonic())\n"
          "        rendered, preds = self.processor.process([image])\n"
          "        now = time.monotonic()\n",
          ("tests/test_live.py::test_loop_shows_each_new_frame_once_with_label_and_fps",)),
    Plant("capture-repeats-frame", "realtime_lrp/media/capture.py",
          "if slot is not None and slot.seq > self._last_seq:",
          "if slot is not None and slot.seq >= self._last_seq:",
          ("tests/test_capture.py::test_read_times_out_without_returning_an_old_frame",)),
    Plant("zplus-neg-term-uses-w-pos", "realtime_lrp/lrp/rules/linear.py",
          '_Term("neg", w_neg, None)]', '_Term("neg", w_pos, None)]',
          ("tests/test_rules.py::test_signed_inputs_and_average_pools_equal_zennit",)),
    Plant("gamma-neg-term-uses-w-up", "realtime_lrp/lrp/rules/linear.py",
          '([_Term("pos", w_up, b_up), _Term("neg", w_down, None)], "pos")',
          '([_Term("pos", w_up, b_up), _Term("neg", w_up, None)], "pos")',
          ("tests/test_rules.py::test_signed_inputs_and_average_pools_equal_zennit",)),
    Plant("gamma-neg-outputs-use-w-up", "realtime_lrp/lrp/rules/linear.py",
          '([_Term("id", w_up, b_up)], "pos"), ([_Term("id", w_down, b_down)], "neg")',
          '([_Term("id", w_up, b_up)], "pos"), ([_Term("id", w_up, b_up)], "neg")',
          ("tests/test_rules.py::test_signed_inputs_and_average_pools_equal_zennit",)),
    Plant("gamma-neg-outputs-signed-input-swap", "realtime_lrp/lrp/rules/linear.py",
          '([_Term("pos", w_down, b_down), _Term("neg", w_up, None)], "neg")',
          '([_Term("pos", w_down, b_down), _Term("neg", w_down, None)], "neg")',
          ("tests/test_rules.py::test_signed_inputs_and_average_pools_equal_zennit",)),
    Plant("avgpool-counts-padding", "realtime_lrp/lrp/rules/norm.py",
          "m.ceil_mode, m.count_include_pad,", "m.ceil_mode, True,",
          ("tests/test_rules.py",)),
    Plant("padding-mode-accepted", "realtime_lrp/lrp/ops.py",
          'if module.padding_mode != "zeros":', "if False:",
          ("tests/test_rules.py::test_padding_modes_other_than_zeros_are_refused",)),
    Plant("bn-after-shared-conv-folded", "realtime_lrp/lrp/graph.py",
          "and len(conv_fx.users) == 1:", "and True:",
          ("tests/test_rules.py::test_batch_norms_that_cannot_be_folded_are_refused",)),
    Plant("model-without-conv-accepted", "realtime_lrp/lrp/graph.py",
          "    if not modules:\n        raise UnsupportedModelError",
          "    if False:\n        raise UnsupportedModelError",
          ("tests/test_rules.py::test_a_model_without_a_first_conv_is_refused",)),
    Plant("preset-gap-falls-back-to-norm", "realtime_lrp/lrp/engine.py",
          "    spec = preset.spec_for(node.kind, first)\n",
          '    spec = preset.spec_for(node.kind, first) or RuleSpec("Norm")\n',
          ("tests/test_registry.py::test_a_preset_without_a_rule_for_a_kind_is_an_error_naming_kind_preset_and_node",)),
    Plant("module-lookup-by-exact-type", "realtime_lrp/lrp/ops.py",
          "    for cls in type(module).__mro__:\n", "    for cls in (type(module),):\n",
          ("tests/test_registry.py::test_modules_are_found_by_their_base_class_and_dropout_of_any_rank_is_the_identity",)),
    Plant("bn-without-affine-scaled-by-zero", "realtime_lrp/lrp/graph.py",
          "torch.ones_like(mean)\n    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)\n"
          "    scale = gamma / torch.sqrt(var + bn.eps)\n    folded",
          "torch.zeros_like(mean)\n    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(mean)\n"
          "    scale = gamma / torch.sqrt(var + bn.eps)\n    folded",
          ("tests/test_registry.py::test_batch_norms_with_and_without_affine_parameters_are_folded",)),
    Plant("engine-folds-after-casting", "realtime_lrp/lrp/engine.py",
          "        graph = canonize(model)  #", "        graph = canonize(model.to(dtype) if dtype else model)  #",
          ("tests/test_registry.py::test_the_engine_canonises_from_the_callers_weights_and_never_changes_the_model",)),
    Plant("box-ignores-the-models-bounds", "realtime_lrp/lrp/rules/linear.py",
          "low, high = context.bounds if self.low is None", "low, high = (0.0, 1.0) if self.low is None",
          ("tests/test_registry.py::test_one_channel_model_with_the_box_rule_and_no_mean_or_std_takes_pixels_in_0_1",)),
    Plant("fast-label-names-top-class", "realtime_lrp/pipeline/fast.py",
          "Prediction(i, classes[i], p, e, classes[e])", "Prediction(i, classes[i], p, i, classes[i])",
          ("tests/test_fast.py::test_label_names_the_explained_class_when_it_is_not_the_top_class",)),
    Plant("plain-label-names-top-class", "realtime_lrp/pipeline/processor.py",
          "float(p), int(e), self.classes[int(e)])", "float(p), int(i), self.classes[int(i)])",
          ("tests/test_fast.py::test_label_names_the_explained_class_when_it_is_not_the_top_class",)),
    Plant("cache-evicts-newest", "realtime_lrp/pipeline/fast.py",
          "self._passes.popitem(last=False)", "self._passes.popitem(last=True)",
          ("tests/test_fast.py::test_pass_cache_keeps_the_most_recent_shapes_and_settings",)),
    Plant("empty-batch-unguarded", "realtime_lrp/pipeline/fast.py",
          "        if not frames:\n            return [], []\n", "",
          ("tests/test_fast.py::test_an_empty_batch_renders_nothing_and_builds_nothing",)),
    Plant("signals-replace-sig-ign", "realtime_lrp/util/signals.py",
          "if signal.getsignal(sig) is not signal.SIG_IGN or sig in _IGNORED_BY_US)",
          "if sig is not None)",
          ("tests/test_reliability.py::test_nohup_video_survives_a_real_sighup",
           "tests/test_reliability.py::test_an_ignored_signal_stays_ignored_in_process")),
    Plant("rename-not-synced", "realtime_lrp/util/atomic.py",
          "        os.replace(partial, target)\n        sync_folder(Path(target).parent)\n",
          "        os.replace(partial, target)\n",
          ("tests/test_reliability.py::test_every_committed_output_syncs_its_folder",)),
    Plant("count-mismatch-is-truncation", "realtime_lrp/media/reader.py",
          "return self.error is not None or 0 < self.packets_read < self.info.frame_count",
          "return self.error is not None or 0 < self.frames_read < self.info.frame_count",
          ("tests/test_reliability.py::test_an_edit_list_is_a_notice_not_truncation",)),
    Plant("missing-pts-is-the-index", "realtime_lrp/media/reader.py",
          "pts = frame.pts if frame.pts is not None else (0 if last is None else last + self._step)",
          "pts = frame.pts if frame.pts is not None else self.frames_read - 1",
          ("tests/test_reliability.py::test_frames_without_pts_follow_the_previous_by_one_frame",)),
    Plant("display-matrix-ignored", "realtime_lrp/media/reader.py",
          "turn = upright_turn(frame.rotation)", "turn = 0",
          ("tests/test_reliability.py::test_rotated_clips_are_explained_and_written_upright",)),
    Plant("size-change-not-letterboxed", "realtime_lrp/apps/video.py",
          "frame = Frame(letterbox(frame.image, size), frame.pts)", "pass",
          ("tests/test_reliability.py::test_a_size_change_mid_stream_is_letterboxed_and_said_once",)),
    Plant("wrong-size-frame-discards-all", "realtime_lrp/apps/video.py",
          "if isinstance(failure, WriterError) and not isinstance(failure, FrameSizeError):",
          "if isinstance(failure, WriterError):",
          ("tests/test_reliability.py::test_frames_of_a_size_that_is_not_handled_keep_the_frames_done",)),
    Plant("one-input-failure-aborts-all", "realtime_lrp/apps/video.py",
          "        except Exception as exc:  # any failure of one input",
          "        except (InputError, WriterError, PartialOutput) as exc:  # any failure of one input",
          ("tests/test_reliability.py::test_out_of_memory_on_one_input_is_its_row_and_the_others_go_on",)),
    Plant("lost-rank-waited-for", "realtime_lrp/apps/video.py",
          "elif time.monotonic() - since > self.timeout:", "elif time.monotonic() - since > 1e9:",
          ("tests/test_reliability.py::test_rank_zero_gives_up_on_a_rank_whose_heartbeat_stopped",)),
    Plant("broken-rank-does-not-report", "realtime_lrp/cli/video.py",
          "            if world == 1:\n                raise\n", "            raise\n",
          ("tests/test_reliability.py::test_a_failing_rank_reports_and_no_rank_waits",)),
    Plant("download-says-nothing", "realtime_lrp/models/files.py",
          'notify(f"downloading {dest.name}', '(lambda _msg: None)(f"downloading {dest.name}',
          ("tests/test_reliability.py::test_a_first_run_download_says_its_size_and_shows_progress",)),
    Plant("download-hash-unchecked", "realtime_lrp/models/files.py",
          "if prefix is not None and not sha256_file(tmp).startswith(prefix):", "if False:",
          ("tests/test_reliability.py::test_a_corrupt_download_is_refused_and_leaves_no_file",)),
    Plant("explicit-cuda-falls-back", "realtime_lrp/cli/options.py",
          "        if not torch.cuda.is_available():\n            raise BadValue(",
          "        if False:\n            raise BadValue(",
          ("tests/test_reliability.py::test_an_explicit_cuda_device_without_cuda_is_one_line_and_exit_2",)),
    Plant("crf-range-of-vp9-for-all", "realtime_lrp/media/writer.py",
          "crf_max: int = 51  #", "crf_max: int = 63  #",
          ("tests/test_reliability.py::test_crf_is_checked_against_the_codecs_own_range",)),
    Plant("webcam-loads-model-first", "realtime_lrp/cli/live.py",
          "    try:  # the camera first:", "    build_processor(options, console)\n    try:  # the camera first:",
          ("tests/test_reliability.py::test_webcam_looks_for_the_camera_before_loading_the_model",)),
    Plant("missing-extra-unsaid", "realtime_lrp/cli/group.py",
          'problem = missing_extra(name or "", rest)', "problem = None",
          ("tests/test_reliability.py::test_a_missing_extra_is_one_line_saying_what_to_install",)),
    Plant("gradcam-unweighted", "realtime_lrp/lrp/cam.py",
          "cam = (grads.mean((2, 3), keepdim=True) * acts).sum(1)", "cam = acts.sum(1)",
          ("tests/test_cam.py::test_maps_equal_pytorch_grad_cam",)),
    Plant("road-fills-the-mean", "realtime_lrp/apps/evaluate/road.py",
          "return torch.where(removed.expand_as(x), filled, x)",
          "return torch.where(removed.expand_as(x), torch.zeros_like(x), x)",
          ("tests/test_road.py::test_imputation_equals_the_librarys_sparse_solve",)),
    Plant("road-stops-early", "realtime_lrp/apps/evaluate/road.py",
          "    for i in range(h * w):", "    for i in range(4):",
          ("tests/test_road.py::test_imputation_equals_the_librarys_sparse_solve",)),
    Plant("class-r-same-class", "realtime_lrp/apps/evaluate/metrics.py",
          "shift = torch.randint(1, classes,", "shift = torch.randint(0, classes,",
          ("tests/test_evaluate.py::test_class_sensitivity_compares_with_a_random_other_class",)),
    Plant("gate-gives-relevance-times-gate", "realtime_lrp/lrp/rules/gate.py",
          "return (R, None), None", "return (R * a[1].float(), None), None",
          ("tests/test_cnn_act.py::test_a_gate_either_way_round_gives_the_signal_all_relevance_and_keeps_the_sign",
           "tests/test_cnn_act.py::test_families_equal_zennit_with_the_canonizers_of_pahde_et_al")),
    Plant("gate-without-dependence", "realtime_lrp/lrp/ops.py",
          "if reader.nodes[gate].kind in _GATES and _depends_on(reader.nodes, gate, signal):",
          "if reader.nodes[gate].kind in _GATES:",
          ("tests/test_cnn_act.py::test_a_product_of_two_tensors_that_is_not_a_gate_is_refused",)),
    Plant("activation-masks-negative-inputs", "realtime_lrp/lrp/rules/identity.py",
          "            return R, None\n\n        return propagate\n\n\nclass Reshape",
          "            return R * (a > 0), None\n\n        return propagate\n\n\nclass Reshape",
          ("tests/test_cnn_act.py::test_activations_take_the_identity_rule_as_zennit_pass",)),
    Plant("activation-runs-in-place", "realtime_lrp/lrp/ops.py",
          'if not getattr(module, "inplace", False):', "if True:",
          ("tests/test_cnn_act.py::test_inplace_activations_leave_the_stored_outputs_alone",)),
    Plant("scale-claims-nonneg", "realtime_lrp/lrp/ops.py",
          'SCALE = Op("scale", _read_mul, _scale, sign="any"', 'SCALE = Op("scale", _read_mul, _scale, sign="keep"',
          ("tests/test_cnn_act.py::test_a_product_with_a_constant_passes_all_relevance_to_the_tensor",)),
    Plant("serve-loopback-without-token", "realtime_lrp/apps/serve/server.py",
          "self.token = (token or new_token()) if require_token else None",
          "self.token = (token or new_token()) if require_token and not loopback else None",
          ("tests/test_serve.py::test_on_loopback_too_the_token_is_required_and_its_cookie_carries_the_port",)),
    Plant("serve-cookie-shared-by-ports", "realtime_lrp/apps/serve/auth.py",
          'return f"rtlrp_token_{port}"', 'return "rtlrp_token"',
          ("tests/test_serve.py::test_on_loopback_too_the_token_is_required_and_its_cookie_carries_the_port",)),
    Plant("serve-page-keeps-token", "realtime_lrp/assets/serve.js",
          "      history.replaceState(history.state, '', location.pathname", "      (() => {})('', location.pathname",
          ("tests/test_serve.py::test_the_page_drops_the_token_from_its_address_and_reloads_with_the_cookie",)),
    Plant("serve-huge-integers", "realtime_lrp/apps/serve/protocol.py",
          'if len(text.lstrip("-")) > MAX_DIGITS:', "if False:",
          ("tests/test_serve_attacks.py::test_malformed_settings_are_invalid_messages",)),
    Plant("serve-deep-json-traceback", "realtime_lrp/apps/serve/protocol.py",
          "    except RecursionError:\n        raise", "    except MemoryError:\n        raise",
          ("tests/test_serve_attacks.py::test_malformed_settings_are_invalid_messages",)),
    Plant("serve-progressive-taken", "realtime_lrp/apps/serve/jpeg.py",
          "if marker not in (0xC0, 0xC1):", "if marker not in (0xC0, 0xC1, 0xC2):",
          ("tests/test_serve_attacks.py::test_the_scan_bomb_and_progressive_jpegs_are_refused_unread",)),
    Plant("serve-scans-uncounted", "realtime_lrp/apps/serve/jpeg.py",
          "if scans > MAX_SCANS:", "if scans > 10 ** 9:",
          ("tests/test_serve_attacks.py::test_a_baseline_jpeg_with_too_many_scans_is_refused",)),
    Plant("serve-short-data-taken", "realtime_lrp/apps/serve/jpeg.py",
          "if len(parts) < intervals:", "if False:",
          ("tests/test_serve_attacks.py::test_truncated_and_size_patched_jpegs_are_refused", "tests/test_serve_attacks.py::test_restart_markers_are_counted_exactly")),
    Plant("serve-bomb-header-1007", "realtime_lrp/apps/serve/jpeg.py",
          "pixels a side\", too_big=True)", "pixels a side\", too_big=False)",
          ("tests/test_serve_attacks.py::test_decompression_bomb_headers_are_too_big_not_broken",)),
    Plant("serve-deflate-on", "realtime_lrp/apps/serve/server.py",
          "ws_per_message_deflate=False,", "ws_per_message_deflate=True,",
          ("tests/test_serve_attacks.py::test_permessage_deflate_is_not_offered",)),
    Plant("serve-decoding-unbudgeted", "realtime_lrp/apps/serve/app.py",
          "client.budget.spend(sum(spent))", "client.budget.spend(0.0)",
          ("tests/test_serve_attacks.py::test_a_client_whose_frames_take_too_long_to_decode_is_closed",)),
    Plant("serve-flood-never-closed", "realtime_lrp/apps/serve/app.py",
          "            if client.rate.flooding:", "            if False:",
          ("tests/test_serve_attacks.py::test_a_client_far_over_its_rate_is_disconnected",)),
    Plant("serve-idle-forever", "realtime_lrp/apps/serve/app.py",
          "idle = None if self.kiosk is not None else self.limits.idle_seconds", "idle = None",
          ("tests/test_serve_attacks.py::test_an_idle_client_is_closed_and_frees_its_slot",)),
    Plant("serve-stop-awaits-decoding", "realtime_lrp/apps/serve/app.py",
          "                self._frame(client, message[\"bytes\"])",
          "                self._frame(client, message[\"bytes\"])\n"
          "                await asyncio.sleep(0) if client.inbox is None else await self._decode_now(client)",
          ("tests/test_serve_attacks.py::test_stopping_while_frames_are_being_decoded_leaves_no_traceback",),
          more=(("    async def _decode(self, client: Client) -> None:",
                 "    async def _decode_now(self, client: Client) -> None:\n"
                 "        from starlette.concurrency import run_in_threadpool\n\n"
                 "        arrival, client.inbox = client.inbox, None\n"
                 "        await run_in_threadpool(decode_frame, arrival.data, self.limits)\n\n"
                 "    async def _decode(self, client: Client) -> None:"),)),
    Plant("serve-slot-held-while-decoding", "realtime_lrp/apps/serve/app.py",
          "                self._frame(client, message[\"bytes\"])",
          "                self._frame(client, message[\"bytes\"])\n"
          "                await asyncio.sleep(0) if client.inbox is None else await self._decode_now(client)",
          ("tests/test_serve_attacks.py::test_a_client_that_leaves_frees_its_slot_at_once_and_its_queued_frames_are_not_decoded",),
          more=(("    async def _decode(self, client: Client) -> None:",
                 "    async def _decode_now(self, client: Client) -> None:\n"
                 "        from starlette.concurrency import run_in_threadpool\n\n"
                 "        arrival, client.inbox = client.inbox, None\n"
                 "        await run_in_threadpool(decode_frame, arrival.data, self.limits)\n\n"
                 "    async def _decode(self, client: Client) -> None:"),)),
    Plant("serve-page-stays-closed-after-idling", "realtime_lrp/assets/serve.js",
          "if (idleClosed && source && ws && ws.readyState === WebSocket.CLOSED) {", "if (false) {",
          ("tests/test_serve.py::test_a_page_closed_for_idling_reconnects_when_it_has_a_frame",)),
    Plant("serve-presets-built-on-demand", "realtime_lrp/apps/serve/worker.py",
          "        for name in (*PRESET_NAMES, *CAM_METHODS):\n            if name in self._processors:",
          "        for name in ():\n            if name in self._processors:",
          ("tests/test_serve_attacks.py::test_every_preset_is_built_at_start_up_and_none_on_a_switch",),
          more=(("        return self._processors[preset]",
                 "        if preset not in self._processors:\n"
                 "            self._processors[preset] = self._make(preset)\n"
                 "        return self._processors[preset]"),)),
    Plant("clrp-ignores-dual", "realtime_lrp/lrp/targets.py",
          "return (own - dual * scale).clamp(min=0)", "return own.clamp(min=0)",
          ("tests/test_targets.py::test_contrastive_equals_clrp_from_its_definition",)),
    Plant("sglrp-drops-p-t", "realtime_lrp/lrp/targets.py",
          "return p_t * (torch.zeros_like(p)", "return (torch.zeros_like(p)",
          ("tests/test_targets.py::test_softmax_gradient_equals_sglrp_from_its_definition",)),
    Plant("shared-maxpool-pads-zeros", "realtime_lrp/lrp/rules/pools.py",
          "pad[0], pad[0] + extra[0]), value=-torch.inf)", "pad[0], pad[0] + extra[0]), value=0.0)",
          ("tests/test_maxpool_ties.py::test_shared_equals_the_per_window_reference",)),
    Plant("cat-relevance-to-the-wrong-input", "realtime_lrp/lrp/rules/index.py",
          "return R.split([x.shape[dim] for x in a], dim), None",
          "return R.split([x.shape[dim] for x in a], dim)[::-1], None",
          ("tests/test_cnn_index.py::test_index_ops_equal_zennit",)),
    Plant("permute-relevance-not-inverted", "realtime_lrp/lrp/rules/index.py",
          "return R.permute(inverse), None", "return R.permute(dims), None",
          ("tests/test_cnn_index.py::test_index_ops_equal_zennit",)),
    Plant("transform-input-bounds-unmapped", "realtime_lrp/lrp/rules/linear.py",
          'if "input_affine" in node.attrs:', "if False:",
          ("tests/test_cnn_index.py::test_family_equals_zennit",)),
    Plant("shifted-relu-floor-zero", "realtime_lrp/lrp/ops.py",
          "return torch.where((a - floor) * sign > 0, a, floor), None",
          "return torch.where((a - floor) * sign > 0, a, torch.zeros_like(a)), None",
          ("tests/test_cnn_index.py::test_batch_norm_before_a_layer_is_merged_into_it",)),
    Plant("merged-conv-border-padded-with-zeros", "realtime_lrp/lrp/graph.py",
          "pads[j].weight = -shift / scale", "pads[j].weight = torch.zeros_like(shift)",
          ("tests/test_cnn_index.py::test_batch_norm_before_a_layer_is_merged_into_it",)),
    Plant("zero-scale-batch-norm-divides-by-zero", "realtime_lrp/lrp/graph.py",
          "scale, shift = torch.where(zero, 1.0, bn.weight), torch.where(zero, 0.0, bn.bias)",
          "scale, shift = bn.weight, bn.bias",
          ("tests/test_cnn_index.py::test_batch_norm_of_zero_scale_is_merged_exactly",)),
    Plant("layernorm-not-centred", "realtime_lrp/lrp/rules/layernorm.py",
          "return x * (s - s.mean(dim, keepdim=True)) / std, None", "return x * s / std, None",
          ("tests/test_transformers.py::test_layernorm_rule_equals_lxt_layer_norm_grad_fn",)),
    Plant("softmax-rule-drops-its-sum", "realtime_lrp/lrp/rules/attention.py",
          "return x * (R - out.float() * R.sum(dim, keepdim=True)), None", "return x * R, None",
          ("tests/test_transformers.py::test_softmax_rule_equals_lxt_softmax_fn_with_masked_inputs",)),
    Plant("uniform-product-not-halved", "realtime_lrp/lrp/rules/attention.py",
          "s = R.float() / stabilise(2 * out.float(), eps, True)", "s = R.float() / stabilise(out.float(), eps, True)",
          ("tests/test_transformers.py::test_attnlrp_equals_a_slow_reference_of_its_rules_on_torchvision_vits",)),
    Plant("cp-lrp-through-queries", "realtime_lrp/lrp/presets.py",
          '"matmul": rule("AttentionValues", epsilon=_LRP0), "softmax": rule("HeldConstant")',
          '"matmul": rule("UniformProduct", epsilon=_LRP0), "softmax": rule("SoftmaxTaylor")',
          ("tests/test_transformers.py::test_cp_lrp_equals_lxt_on_torchvision_vits",)),
    Plant("heads-merged-out-of-order", "realtime_lrp/lrp/rules/attention.py",
          "x = x.transpose(1, 2).reshape(n, t, h * d)", "x = x.reshape(n, t, h * d)",
          ("tests/test_transformers.py::test_cp_lrp_equals_lxt_on_torchvision_vits",)),
    Plant("position-embedding-absorbs-nothing", "realtime_lrp/lrp/rules/constants.py",
          "r = x.float() * (R.float() / stabilise(out.float(), eps, True))", "r = R.float()",
          ("tests/test_transformers.py::test_cp_lrp_equals_lxt_on_torchvision_vits",)),
    Plant("vit-size-unchecked", "realtime_lrp/lrp/ops.py",
          'if not all(node.attrs["check"](shapes)):', "if False:",
          ("tests/test_transformers.py::test_a_vit_given_another_size_is_told_the_size_it_needs",)),
    Plant("half-epsilon-recomputes-z", "realtime_lrp/lrp/rules/linear.py",
          "if self.z_is_output:", "if False:",
          ("tests/test_transformers.py::test_half_precision_maps_equal_fp32_maps_up_to_rounding",)),
    Plant("auto-ignores-attention", "realtime_lrp/lrp/presets.py",
          'return "cp-lrp", f"the model has attention', 'return "epsilon-plus-flat", f"the model has attention',
          ("tests/test_transformers.py::test_auto_takes_cp_lrp_for_a_transformer_and_says_so",)),
    Plant("convnext-layernorm2d-over-last-dim", "realtime_lrp/lrp/ops.py",
          'elif type(module).__name__ == "LayerNorm2d":', 'elif type(module).__name__ == "LayerNorm2":',
          ("tests/test_convnext.py::test_small_convnext_equals_lxt_gradient_x_input",)),
    Plant("swin-relevance-not-shifted-back", "realtime_lrp/lrp/rules/attention.py",
          "return (window_partition(R, window, shift),), None", "return (window_partition(R, window, (0, 0)),), None",
          ("tests/test_transformers.py::test_swin_cp_lrp_equals_gradient_x_input_with_the_probabilities_held_constant",)),
    Plant("resize-aliases", "realtime_lrp/pipeline/preprocess.py",
          "align_corners=False, antialias=True)", "align_corners=False, antialias=False)",
          ("tests/test_render.py::test_shrinking_is_antialiased",)),
    Plant("crop-from-the-left", "realtime_lrp/pipeline/preprocess.py",
          "                x0 = (fw - cw) // 2\n", "                x0 = 0\n",
          ("tests/test_render.py::test_fit_geometry_of_crop_pad_and_squash",)),
    Plant("default-maps-hot-and-diverging", "realtime_lrp/pipeline/render.py",
          'return "signed" if signed else "fire"', 'return "diverging" if signed else "hot"',
          ("tests/test_render.py::test_default_overlays_stand_out_on_white_and_on_black",)),
    Plant("label-never-wraps", "realtime_lrp/pipeline/render.py",
          "    lines = [text] if cv2.getTextSize(text, FONT, scale, thickness)[0][0] <= room else",
          "    lines = [text] if True else",
          ("tests/test_render.py::test_a_long_label_shrinks_then_wraps_to_fit_the_frame",)),
    Plant("sheet-white-between-tiles", "realtime_lrp/pipeline/render.py",
          "sheet = np.zeros((rows * ch, cols * cw, 3), np.uint8)",
          "sheet = np.full((rows * ch, cols * cw, 3), 255, np.uint8)",
          ("tests/test_render.py::test_contact_sheet_tiles_are_one_size_with_no_gaps",)),
    Plant("padding-folded-into-the-scale", "realtime_lrp/pipeline/stream.py",
          "ok = torch.isfinite(q) & (q > 0) & (valid if valid is not None else _all(q.shape[0], q.device))",
          "ok = torch.isfinite(q) & (q > 0) & _all(q.shape[0], q.device)",
          ("tests/test_fast.py::test_a_partial_batch_runs_padded_in_the_captured_pass_and_its_padding_is_discarded",)),
    Plant("nvenc-probe-at-a-fixed-size", "realtime_lrp/media/writer.py",
          "failure = open_failure(codec.encoder, self.file_size) if", "failure = open_failure(codec.encoder) if",
          ("tests/test_videoio.py::test_nvenc_probe_opens_at_the_outputs_size_and_names_the_cause",)),
    Plant("small-input-traceback", "realtime_lrp/lrp/engine.py",
          'if "too small" not in str(error):', "if True:",
          ("tests/test_explain.py::test_api_overlay_is_what_the_frame_pass_draws_and_a_small_input_is_one_line",)),
    Plant("serve-shares-one-scale", "realtime_lrp/pipeline/stream.py",
          "        if self.value.shape[0] != 1:\n            blended = torch.where(self.seen, (1 - self.momentum)",
          "        if self.value.shape[0] != 1:\n            self.value.fill_(self.value.mean())\n"
          "            blended = torch.where(self.seen, (1 - self.momentum)",
          ("tests/test_render.py::test_stable_scale_with_a_slot_per_frame_keeps_each_stream_apart",)),
    Plant("refusal-names-no-module", "realtime_lrp/lrp/graph.py",
          """_hinted(f"no LRP rule for node '{fx_node.name}' ({what}){where}")""",
          """_hinted(f"no LRP rule for node '{fx_node.name}' ({what})")""",
          ("tests/test_cnn_index.py::test_a_refused_function_names_the_module_that_calls_it",)),
    Plant("sampled-select-never-falls-back", "realtime_lrp/lrp/filter.py",
          "        if count < k:\n", "        if count < 0:\n",
          ("tests/test_filter.py::test_a_sample_that_misleads_falls_back_to_the_whole_row",)),
    Plant("densenet-keys-not-renamed", "realtime_lrp/models/imagenet.py",
          "        state = _torchvision_keys(arch, safe_load(cached))", "        state = safe_load(cached)",
          ("tests/test_models.py::test_imagenet_modern_arch_loads_planted_weights_through_the_safe_loader",)),
    Plant("small-stem-keeps-its-stride", "realtime_lrp/models/architectures.py",
          "    elif small_input:\n        stride = (1, 1)", "    elif small_input:\n        pass",
          ("tests/test_train_archs.py::test_modern_architecture_small_stem_stops_downsampling",)),
    Plant("fp16-overflow-flag-always-finite", "realtime_lrp/lrp/engine.py",
          "finite = torch.isfinite(maps).flatten(1).all(1) & torch.isfinite(logits).all(1)",
          "finite = torch.ones_like(explained, dtype=torch.bool)",
          ("tests/test_fidelity_guard.py::test_the_overflowing_sample_alone_is_flagged_with_its_layer",)),
    Plant("fp16-overflow-frame-not-rerun", "realtime_lrp/pipeline/fast.py",
          "if overflowed and self.owner.explainer.dtype", "if False and self.owner.explainer.dtype",
          ("tests/test_fidelity_guard.py::test_the_frame_pass_reruns_the_overflowing_frame_in_fp32_and_says_so_once",)),
    Plant("json-streamed-into-the-target", "realtime_lrp/util/atomic.py",
          '    write_text(target, json.dumps(value, indent=2) + "\\n")',
          '    make_parent(target)\n    with open(target, "w", encoding="utf-8") as fh:\n        json.dump(value, fh, indent=2)\n        fh.write("\\n")',
          ("tests/test_reliability.py::test_every_committed_output_syncs_its_folder",)),
    Plant("method-ignored-builds-lrp", "realtime_lrp/pipeline/processor.py",
          "    if method == \"lrp\":\n        return LRP(", "    if True:\n        return LRP(",
          ("tests/test_cam.py::test_video_with_a_cam_method_writes_that_methods_map",
           "tests/test_live.py::test_webcam_with_a_cam_method_shows_that_methods_map",
           "tests/test_serve.py::test_a_client_picks_gradcam_and_gets_its_map")),
    Plant("cam-layer-ignored", "realtime_lrp/pipeline/processor.py",
          "CAM(device_model(model, device, dtype), method, size, cam_layer)",
          "CAM(device_model(model, device, dtype), method, size, None)",
          ("tests/test_cam.py::test_video_with_a_cam_method_writes_that_methods_map",
           "tests/test_cam.py::test_bad_method_and_cam_layer_are_one_line_on_every_live_command")),
    Plant("cam-maps-coloured-as-signed", "realtime_lrp/lrp/cam.py",
          "    signed = False\n", "    signed = True\n",
          ("tests/test_cam.py::test_video_with_a_cam_method_writes_that_methods_map",
           "tests/test_serve.py::test_a_client_picks_gradcam_and_gets_its_map")),
    Plant("serve-method-setting-dropped", "realtime_lrp/apps/serve/protocol.py",
          "value in METHODS:\n                changes[key] = value", "value in METHODS:\n                pass",
          ("tests/test_serve.py::test_a_client_picks_gradcam_and_gets_its_map",)),
    Plant("serve-bad-method-taken", "realtime_lrp/apps/serve/protocol.py",
          "elif key == \"method\" and isinstance(value, str) and value in METHODS:",
          "elif key == \"method\" and isinstance(value, str):",
          ("tests/test_serve.py::test_a_bad_message_closes_only_its_own_connection",)),
    Plant("compare-halves-share-one-scale", "realtime_lrp/apps/serve/worker.py",
          "stream.state(half, (name, top_k), processor, job.reset)",
          "stream.state(0, (names[0], top_k), processor, job.reset)",
          ("tests/test_serve.py::test_the_compare_layout_puts_lrp_and_gradcam_of_one_frame_side_by_side",)),
    Plant("compare-shows-lrp-twice", "realtime_lrp/apps/serve/worker.py",
          "names = (s.preset, s.compared) if", "names = (s.preset, s.preset) if",
          ("tests/test_serve.py::test_the_compare_layout_puts_lrp_and_gradcam_of_one_frame_side_by_side",)),
    Plant("processor-keeps-its-own-top-k", "realtime_lrp/pipeline/processor.py",
          "top_k: float = DEFAULT_TOP_K, target", "top_k: float = 0.02, target",
          ("tests/test_serve.py::test_each_client_keeps_its_own_settings",)),
    Plant("bench-cuda-unchecked", "realtime_lrp/cli/bench.py",
          '@click.option("--device", default="auto", show_default=True, callback=check_device,',
          '@click.option("--device", default="auto", show_default=True,',
          ("tests/test_reliability.py::test_bench_evaluate_and_train_refuse_cuda_without_it_and_auto_says_it_falls_back",)),
    Plant("train-auto-falls-back-silently", "realtime_lrp/apps/train/loop.py",
          'if env.main and config.device == "auto" and env.device.type == "cpu":', 'if False:',
          ("tests/test_reliability.py::test_bench_evaluate_and_train_refuse_cuda_without_it_and_auto_says_it_falls_back",)),
    Plant("headless-ignores-q", "realtime_lrp/media/display.py",
          "return self.keys.poll() if self.keys is not None else None", "return None",
          ("tests/test_reliability.py::test_headless_webcam_stops_on_q_and_enter_and_reads_only_a_terminal_or_a_pipe",)),
    Plant("keys-read-from-dev-null", "realtime_lrp/media/display.py",
          "return fd if os.isatty(fd) or stat.S_ISFIFO(mode) else None", "return fd",
          ("tests/test_reliability.py::test_headless_webcam_stops_on_q_and_enter_and_reads_only_a_terminal_or_a_pipe",)),
    Plant("jpeg-walk-ignores-the-end", "realtime_lrp/apps/serve/jpeg.py",
          "            if p > bits:\n", "            if False:\n",
          ("tests/test_serve_attacks.py::test_a_jpeg_cut_by_a_few_blocks_with_an_end_marker_added_is_refused",)),
    Plant("fp16-rerun-keeps-the-blank-fold", "realtime_lrp/pipeline/fast.py",
          'if before is not None and self.mode == "stream":\n            self.state.restore(before)',
          'if False:\n            self.state.restore(before)',
          ("tests/test_fidelity_guard.py::test_the_streams_colour_scale_and_smoothed_map_fold_in_the_fp32_rerun_not_the_blank_map",)),
    Plant("fp16-rerun-state-thrown-away", "realtime_lrp/pipeline/fast.py",
          "            if before is not None:\n                for mine, theirs in",
          "            if False:\n                for mine, theirs in",
          ("tests/test_fidelity_guard.py::test_the_streams_colour_scale_and_smoothed_map_fold_in_the_fp32_rerun_not_the_blank_map",)),
    Plant("serve-source-lying-on-its-side", "realtime_lrp/media/capture.py",
          "capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)", "capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)",
          ("tests/test_reliability.py::test_serve_source_sends_a_rotated_clips_frames_upright",)),
    Plant("jpeg-libjpeg-check-passes-all", "realtime_lrp/apps/serve/jpeg.py",
          "return bool((grey[rows:, :mcu_w] != 128).any())", "return True",
          ("tests/test_serve_attacks.py::test_a_jpeg_cut_by_a_few_blocks_with_an_end_marker_added_is_refused",)),
    Plant("filter-mask-keeps-random", "realtime_lrp/lrp/filter.py",
          "return (flat * (key >= threshold)).view_as(relevance)",
          "return (flat * (torch.rand_like(flat.float()).argsort(1).argsort(1) < k)).view_as(relevance)",
          ("tests/test_filter.py::test_a_row_that_keeps_everything_is_passed_on_and_fp16_takes_the_mask",)),
    Plant("filter-tie-at-bound-keeps-the-row", "realtime_lrp/lrp/filter.py",
          "rows.append((bound, count == m))", "rows.append((bound, True))",
          ("tests/test_filter.py::test_cpu_filter_keeps_what_the_mask_of_topk_keeps",)),
    Plant("filter-drops-ties-at-threshold", "realtime_lrp/lrp/filter.py",
          "below = torch.nextafter(torch.tensor([t for t, _ in rows]), torch.tensor(-math.inf)).tolist()",
          "below = [t for t, _ in rows]",
          ("tests/test_filter.py::test_cpu_filter_keeps_what_the_mask_of_topk_keeps",)),
    Plant("stills-captures-every-size", "realtime_lrp/apps/stills.py",
          "sizes[frame.shape] == 1", "False",
          ("tests/test_stills.py::test_a_size_seen_once_runs_eagerly_and_a_repeated_size_is_captured_once",)),
    Plant("overlay-faint-on-light-frames", "realtime_lrp/pipeline/render.py",
          "weight = ((v * alpha)[..., None] * (1.0 + LIGHT_BOOST * light)).clamp(max=1.0)",
          "weight = (v * alpha)[..., None]",
          ("tests/test_render.py::test_half_relevance_stands_out_on_a_pale_item_as_on_a_dark_one",)),
    Plant("overlay-light-pixels-not-darkened", "realtime_lrp/pipeline/render.py",
          "ff = ff * (1.0 - DARKEN / 255.0 * weight * ff)", "ff = ff * 1.0",
          ("tests/test_render.py::test_half_relevance_stands_out_on_a_pale_item_as_on_a_dark_one",)),
    Plant("depthwise-transpose-kernel-unflipped", "realtime_lrp/lrp/rules/linear.py",
          "return F.conv2d(s, weight.flip(2, 3), None, 1, reach, dilation, groups)",
          "return F.conv2d(s, weight, None, 1, reach, dilation, groups)",
          ("tests/test_cnn_act.py::test_families_equal_zennit_with_the_canonizers_of_pahde_et_al",)),
    Plant("zplus-split-denominator-not-halved", "realtime_lrp/lrp/rules/linear.py",
          "return self.node.forward(a.abs(), weight, bias)[0].add_(out).mul_(0.5)",
          "return self.node.forward(a.abs(), weight, bias)[0].add_(out)",
          ("tests/test_rules.py::test_signed_inputs_and_average_pools_equal_zennit",)),
    Plant("einsum-free-indices-swapped", "realtime_lrp/lrp/ops.py",
          '"".join(batch + free_a + free_b), list(out))', '"".join(batch + free_b + free_a), list(out))',
          ("tests/test_maxvit_swin_v2.py::test_maxvit_equals_gradient_x_input_under_its_rules",)),
    Plant("folded-bias-drops-its-index", "realtime_lrp/lrp/ops.py",
          "    args, kwargs = torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), lambda t: _exact(reader, t))",
          "    args, kwargs = torch.fx.node.map_arg((fx_node.args, fx_node.kwargs), lambda t: _exact(reader, t))\n"
          "    args = (args[0], args[1].sort().values) if fx_node.target is operator.getitem else args",
          ("tests/test_maxvit_swin_v2.py::test_maxvit_equals_gradient_x_input_under_its_rules",)),
    Plant("swin-v2-logit-scale-unclamped", "realtime_lrp/lrp/ops.py",
          "logit_scale.clamp(max=math.log(100.0)).exp()", "logit_scale.exp()",
          ("tests/test_maxvit_swin_v2.py::test_swin_v2_equals_gradient_x_input_under_its_rules",)),
    Plant("swin-v2-keys-normalised-over-tokens", "realtime_lrp/lrp/ops.py",
          'attrs={"dim": -1 if part == 0 else -2}', 'attrs={"dim": -1}',
          ("tests/test_maxvit_swin_v2.py::test_swin_v2_equals_gradient_x_input_under_its_rules",)),
    Plant("fixed-size-model-told-to-grow", "realtime_lrp/models/sizes.py",
          "if least is None and len(built) == 2", "if False and len(built) == 2",
          ("tests/test_maxvit_swin_v2.py::test_explain_with_imagenet_maxvit_runs_and_another_size_is_one_line_naming_its_size",)),
    Plant("fused-attention-read-silently", "realtime_lrp/lrp/ops.py",
          "functions=(F.scaled_dot_product_attention, F.multi_head_attention_forward))", "functions=())",
          ("tests/test_maxvit_swin_v2.py::test_a_fused_attention_is_refused_in_one_line_naming_the_supported_forms",)),
    Plant("bench-lxt-patches-leak", "realtime_lrp/apps/bench.py",
          "                if k in kept:\n                    setattr(cls, k, kept[k])",
          "                if k in kept:\n                    pass",
          ("tests/test_maxvit_swin_v2.py::test_bench_lxt_call_is_lxt_s_cp_lrp_and_leaves_the_classes_unpatched",)),
    Plant("bench-lxt-unpatched", "realtime_lrp/apps/bench.py",
          "        for cls, patch in patch_map.items():\n            patch(cls)",
          "        for cls, patch in patch_map.items():\n            pass",
          ("tests/test_maxvit_swin_v2.py::test_bench_lxt_call_is_lxt_s_cp_lrp_and_leaves_the_classes_unpatched",)),
    Plant("evaluate-size-unchecked", "realtime_lrp/apps/evaluate/runner.py",
          "        check_input_size(model.float().eval(), dict(card), processing_size(card, size))", "        pass",
          ("tests/test_maxvit_swin_v2.py::test_explain_with_imagenet_maxvit_runs_and_another_size_is_one_line_naming_its_size",)),
    Plant("bench-size-unchecked", "realtime_lrp/apps/bench.py",
          "            check_input_size(model, named, (size, size))", "            pass",
          ("tests/test_maxvit_swin_v2.py::test_bench_of_a_transformer_at_another_size_is_one_line_naming_its_size",)),
)


def _copy_tree(dest: Path) -> None:
    """The tracked files of the working tree, as they are now, under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_plant(plant: Plant) -> tuple[str, str]:
    """Plant the bug in a copy and run its tests: (verdict, the first failure or summary line)."""
    with tempfile.TemporaryDirectory(prefix=f"plant-{plant.name}-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        target = copy / plant.path
        text = target.read_text()
        for old, new in ((plant.old, plant.new), *plant.more):
            if text.count(old) != 1:
                return "STALE", f"the text to replace occurs {text.count(old)} times in {plant.path}"
            text = text.replace(old, new)
        target.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(copy))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *plant.tests],
                                cwd=copy, env=env, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    if result.returncode == 0:
        return "PASSED (weak test)", lines[-1] if lines else ""
    if result.returncode != 1:
        return f"ERROR (pytest exit {result.returncode})", lines[-1] if lines else result.stderr[-300:]
    failure = next((line[2:].strip() for line in lines if line.startswith("E ")), lines[-1] if lines else "")
    return "FAILED as it should", failure[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="plants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the plants and their tests")
    args = parser.parse_args()
    by_name = {p.name: p for p in PLANTS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown plant {unknown[0]!r}; choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] or list(PLANTS)
    if args.list:
        for p in chosen:
            print(f"{p.name}: {p.path} -> {' '.join(p.tests)}")
        return 0
    bad = 0
    for p in chosen:
        start = time.monotonic()
        verdict, detail = run_plant(p)
        bad += not verdict.startswith("FAILED")
        print(f"{p.name:30s} {verdict:22s} {time.monotonic() - start:5.0f} s  {detail}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} plants caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
