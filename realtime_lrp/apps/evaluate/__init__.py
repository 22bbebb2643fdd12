"""``rtlrp evaluate``: how faithful, stable and sparse each explanation is, against baselines.

Every method (each LRP preset at each target mode, top-k and dtype; Grad-CAM, Grad-CAM++ and
LayerCAM; random maps, the gradient and gradient × input) explains the same images, and the
same class of each: the fp32 model's top-1. These properties are measured per image, then
averaged:

- **Faithfulness, pixel-flipping** (Bach et al. 2015, Samek et al. 2016). Input pixels are
  ranked by their relevance summed over channels (ties in a seeded random order). In steps
  of ``step`` (2%) of the pixels up to ``max_fraction`` (50%), k = 1..K, the round(k·step·H·W)
  most relevant (MoRF) or least relevant (LeRF) pixels are set to the replacement value (the
  model's per-channel mean, 0 after normalisation), and the softmax probability of the
  explained class is recorded. AOPC = mean over k of p(x) − p(x_k). A faithful map has a
  high MoRF AOPC (the score collapses when its pixels go) and a low LeRF AOPC. Every curve is
  scored by the fp32 model, so rows differ only by their maps.
- **Faithfulness, ROAD** (Rong et al. 2022): the same steps, the removed pixels filled by noisy
  linear imputation from their neighbours (``road``) instead of a constant, which a model has
  not seen; this debiases the MoRF/LeRF comparison from the fill value.
- **Robustness, average sensitivity** (Yeh et al. 2019): Pearson r between the map of x and
  the maps of x + Gaussian noise of ``noise`` grey levels (0.5/255 of the pixel range by
  default, not clipped), averaged over ``draws`` draws; 1 is a map unmoved by the noise. On a
  video, also the r between the maps of consecutive frames (``frame_r``).
- **Complexity, sparseness**: the Gini index of |R| (Chalasani et al. 2020); 1 puts all
  relevance on one pixel, 0 spreads it evenly.
- **Class sensitivity** (Quantus's Random Logit, Sixt et al. 2020): |r| between the map of the
  explained class and that of a random other class; 1 is a map blind to the class.
- **Cost**: milliseconds per image of the method's explanation on the evaluate device.

The LRP maps of a dtype other than fp32 also get ``r_vs_fp32``, the median r to the fp32 map
of the same preset and top-k.

Modules: ``methods`` (what is compared; the CAM family is :mod:`realtime_lrp.lrp.cam`), ``inputs`` (the images),
``metrics`` (the measures), ``road`` (the imputation), ``runner`` (one run) and ``report``
(table, JSON, plot).
"""
