"""The KV cache modes, by their ``--cache`` name. Each mode is one module that owns its graph
pass, its buffers, its call convention and its TensorRT dynamic shapes; the generator and the
TensorRT backend look the mode up here. A mode module has:

- ``FIXED_SHAPES``: a decode step has one shape (CUDA graphs, chunked prefill);
- ``FIRST_GRAPH``: a second graph for a prompt fed into an empty cache;
- ``apply(gm, batch_size, max_len, inplace, fresh)``: the graph pass;
- ``new_state(shapes, batch_size, max_len, dtype, device, kept)``: the cache at the start of a
  sequence (``kept``: the previous sequence's, which a static buffer reuses);
- ``call(graph, inputs, state, start, cache_position)``: one step (``inputs``: the model's and
  the row inputs), returning
  ``(logits, next_token, state)``;
- ``tensorrt_shapes(num_inputs, seq, max_len)``: dynamic-shape specs of the inputs it added.
"""

import dynamic_cache
import no_cache
import static_cache_v1
import static_cache_v2

MODES = {"static_v2": static_cache_v2, "static_v1": static_cache_v1, "dynamic": dynamic_cache, "": no_cache}
