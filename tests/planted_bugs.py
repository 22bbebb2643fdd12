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
          "return (flat * (key >= threshold)).view_as(relevance)",
          "return (flat * (torch.rand_like(flat).argsort(1).argsort(1) < k)).view_as(relevance)",
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
          "cv2.COLOR_BGR2GRAY)[:, :, None]", "cv2.COLOR_RGB2GRAY)[:, :, None]",
          ("tests/test_render.py::test_preprocess_whole_frame_gray_and_rgb",)),
    Plant("fast-gray-weights-reversed", "realtime_lrp/pipeline/fast.py",
          "GRAY_WEIGHTS = (0.114, 0.587, 0.299)", "GRAY_WEIGHTS = (0.299, 0.587, 0.114)",
          ("tests/test_fast.py::test_fast_gray_conversion_uses_bt601_weights_on_bgr",)),
    Plant("heatmap-ignores-scale", "realtime_lrp/pipeline/render.py",
          "heat = colorize(r, scale, cmap)", "heat = colorize(r, 1.0, cmap)",
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
          "        relevance, preds = self.processor.explain([image])\n"
          "        scale = self.processor.scales(relevance)[0]\n"
          "        now = time.monotonic()\n"
          "        self.meter.tick(now)\n",
          "        self.meter.tick(time.monotonic())\n"
          "        relevance, preds = self.processor.explain([image])\n"
          "        scale = self.processor.scales(relevance)[0]\n"
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
          "or len(conv_fx.users) != 1:", "or False:",
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
          "if bn.weight is not None else torch.ones_like(mean)", "if bn.weight is not None else torch.zeros_like(mean)",
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
    Plant("clrp-ignores-dual", "realtime_lrp/lrp/targets.py",
          "return (own - dual * scale).clamp(min=0)", "return own.clamp(min=0)",
          ("tests/test_targets.py::test_contrastive_equals_clrp_from_its_definition",)),
    Plant("sglrp-drops-p-t", "realtime_lrp/lrp/targets.py",
          "return p_t * (torch.zeros_like(p)", "return (torch.zeros_like(p)",
          ("tests/test_targets.py::test_softmax_gradient_equals_sglrp_from_its_definition",)),
    Plant("shared-maxpool-pads-zeros", "realtime_lrp/lrp/rules/pools.py",
          "pad[0], pad[0] + extra[0]), value=-torch.inf)", "pad[0], pad[0] + extra[0]), value=0.0)",
          ("tests/test_maxpool_ties.py::test_shared_equals_the_per_window_reference",)),
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
