"""Vision-language models (run_vlm.py, vision_language.py, qwen_vl.py, eagle2.py) on tiny
random-weight configs (tests/tiny_vlm.py).

- Both families implement vision_language.VisionLanguageModel: every member, of the same kind
  and with the same parameters.
- Qwen2.5-VL: the pipeline's logits and greedy tokens on an image prompt equal Hugging Face's
  own generate() (prefill and 24 decode steps) in every cache mode, with M-RoPE positions; the
  compiled fixed-resolution vision encoder equals the eager one.
- Eagle2: the exported pipeline equals the project's eager implementation; tiling equals the
  original algorithm; original-layout weights load through the key renames.
- The CLI (``run_vlm.main`` in process) with the bundled image, a model folder, --benchmark
  JSON, and each bad image input (one error line, exit code 2).
"""

import copy
import inspect
import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import eagle2
import register_sdpa
import run_vlm
from tiny import CACHE_MODES
from tiny_vlm import (
    NEW_TOKENS,
    QWEN_ATTENTION,
    eagle_family,
    qwen_family,
    run_pipeline,
    sample_image,
    tiny_eagle_config,
    tiny_eagle_model,
    tiny_qwen_config,
    tiny_qwen_model,
    vlm_config,
)
from vision_language import VisionLanguageModel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample():
    return sample_image()


@pytest.fixture(scope="module")
def qwen(sample):
    vlm = qwen_family(tiny_qwen_model())
    vlm.set_image(sample)
    return vlm


@pytest.fixture(scope="module")
def eagle(sample):
    vlm = eagle_family(tiny_eagle_model())
    vlm.set_image(sample)
    return vlm


def kind(member):
    """What a member is: a class method, a property, a method or data."""
    if isinstance(member, classmethod):
        return "class method"
    if isinstance(member, property):
        return "property"
    return "method" if inspect.isfunction(member) else "data"


def parameters(member):
    function = member.__func__ if isinstance(member, classmethod) else member
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


INTERFACE = {name: "data" for name in VisionLanguageModel.__annotations__} | {
    name: kind(member) for name, member in vars(VisionLanguageModel).items()
    if not name.startswith("_") and kind(member) != "data"
}


@pytest.mark.parametrize("name", ["qwen", "eagle"])
def test_family_implements_the_interface(name, request):
    """Every member of VisionLanguageModel is there, of the same kind, with the same parameters."""
    vlm = request.getfixturevalue(name)
    assert set(INTERFACE.values()) == {"data", "method", "property", "class method"}
    for member, expected in INTERFACE.items():
        ours = inspect.getattr_static(vlm, member)
        assert kind(ours) == expected, member
        if expected in ("method", "class method"):
            assert parameters(ours) == parameters(vars(VisionLanguageModel)[member]), member


def test_eos_ids_hold_the_turn_end(qwen, eagle):
    """Both chat templates end a turn with <|im_end|>: generation stops there."""
    for vlm in (qwen, eagle):
        assert vlm.tokenizer.convert_tokens_to_ids("<|im_end|>") in vlm.eos_ids()


@pytest.fixture(scope="module")
def qwen_reference(qwen):
    """Hugging Face generate(), eager attention everywhere, on the same prompt."""
    hf = qwen.hf
    input_ids = run_vlm.prompt_input_ids(qwen, vlm_config())
    hf.set_attn_implementation("eager")
    try:
        out = hf.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=qwen.pixel_values,
            image_grid_thw=qwen.grid_thw, mm_token_type_ids=(input_ids == qwen.image_token_id).int(),
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )
    finally:
        hf.set_attn_implementation(QWEN_ATTENTION)
    return input_ids, torch.stack(out.logits, 1), out.sequences[:, input_ids.shape[1]:]


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_qwen_matches_hugging_face(qwen, qwen_reference, cache):
    ref_ids, ref_logits, ref_tokens = qwen_reference
    input_ids, logits, tokens = run_pipeline(qwen, vlm_config(cache=cache))
    assert torch.equal(input_ids, ref_ids)
    assert (input_ids == qwen.image_token_id).sum() == 192
    assert len(logits) == NEW_TOKENS  # prefill + 23 decode steps (the last token needs none)
    torch.testing.assert_close(torch.stack(logits, 1), ref_logits[:, :len(logits)], rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)


def test_qwen_language_model_takes_quantized_weights(qwen, qwen_reference):
    """--quant_format reaches the language model's graph (not the vision encoder's): INT8
    weights move the logits off the 16-bit reference, by about INT8's rounding."""
    _, ref_logits, _ = qwen_reference
    # (a copy: the build frees the 16-bit weights it quantized, and the other tests share the model)
    _, logits, _ = run_pipeline(copy.deepcopy(qwen), vlm_config(cache="static_v2", quant_format="int8",
                                                                weight_only=True))
    reference = ref_logits[:, :len(logits)]
    difference = (torch.stack(logits, 1) - reference).abs().max()
    assert 1e-4 < difference < 0.05 * reference.abs().max()


def test_qwen_positions_are_mrope(qwen):
    """The image's tokens get 2-D (height, width) positions; decode continues from the rope delta."""
    input_ids = run_vlm.prompt_input_ids(qwen, vlm_config())
    positions = qwen.positions(input_ids)
    image = (input_ids[0] == qwen.image_token_id).nonzero().view(-1)
    t, h, w = positions[:, 0, image]
    assert t.unique().numel() == 1 and h.unique().numel() == 12 and w.unique().numel() == 16  # 336x448 px / 28
    assert positions.max() + 1 < input_ids.shape[1]  # the image is 12x16 tokens but spans 16 positions
    nxt = qwen.decode_positions(input_ids.shape[1])
    assert nxt.shape == (3, 1, 1) and (nxt == positions.max() + 1).all()


def test_eagle_positions_are_text_positions(eagle):
    """Eagle2's language model takes 1-D text positions; decode continues at the cache length."""
    input_ids = run_vlm.prompt_input_ids(eagle, vlm_config(batch_size=2))
    length = input_ids.shape[1]
    assert torch.equal(eagle.positions(input_ids), torch.arange(length).expand(2, length))
    assert torch.equal(eagle.decode_positions(length), torch.full((2, 1), length))


def test_qwen_compiled_vision_equals_eager(qwen, sample):
    """At 448x336 px (multiples of 112) the exported vision encoder's features equal the eager
    Hugging Face tower's; at 420x308 the windows are ragged, so it does not apply."""
    run = vlm_config(batch_size=2)
    eager, _, _ = run_vlm.build_vision(qwen, "eager", run)
    compiled, mode, _ = run_vlm.build_vision(qwen, "compile", run)
    assert mode == "compile"
    assert torch.equal(compiled(), eager())
    qwen.set_image(sample.resize((420, 308)))
    try:
        assert qwen.static_encoder()[0] is None
        qwen.set_image(sample.resize((420, 308)), compiled=True)  # resized to 448x336
        assert qwen.grid_thw.tolist() == [[1, 24, 32]]
    finally:
        qwen.set_image(sample)


# -- Eagle2 ---------------------------------------------------------------------------------
def reference_tile_grid(width, height, image_size, min_num=1, max_num=12):
    """Eagle2's processor, as published: candidate ratios sorted by tile count, the first with
    the highest min(area ratio, 0.6) * aspect match wins."""
    aspect_ratio = width / height
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    best_factor, best_ratio = float("-inf"), (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        factor = min((ratio[0] * ratio[1] * image_size * image_size) / area, 0.6) * min(
            target_aspect_ratio / aspect_ratio, aspect_ratio / target_aspect_ratio
        )
        if factor > best_factor:
            best_factor, best_ratio = factor, ratio
    return best_ratio


SIZES = [(448, 336), (448, 448), (100, 100), (1920, 1080), (1080, 1920), (3000, 400), (400, 3000), (640, 480),
         (1000, 999), (2048, 2048), (50, 800), (1344, 896), (4000, 3000), (897, 449)]


@pytest.mark.parametrize("max_num", [12, 6, 1])
def test_eagle_tiling_matches_original(max_num):
    for width, height in SIZES:
        assert eagle2.tile_grid(width, height, 448, 1, max_num) == reference_tile_grid(width, height, 448, 1, max_num)


def test_eagle_tiles(sample):
    tiles = eagle2.tile_image(sample, 448)  # 448x336: a 4x3 grid and a thumbnail
    assert len(tiles) == 13 and all(t.size == (448, 448) for t in tiles)
    resized = sample.resize((4 * 448, 3 * 448), Image.Resampling.BICUBIC)
    assert list(tiles[5].getdata()) == list(resized.crop((448, 448, 896, 896)).getdata())  # row 1, column 1
    assert len(eagle2.tile_image(sample.resize((100, 100)), 448)) == 1  # one tile: no thumbnail
    pixels = eagle2.to_pixels(tiles[:2])
    assert pixels.shape == (2, 3, 448, 448) and -1 <= pixels.min() and pixels.max() <= 1


def test_eagle_pixel_shuffle_matches_original():
    """The original's view/permute sequence (which names the grid axes w, h)."""
    x = torch.randn(3, 4, 6, 8)
    n, w, h, c = x.size()
    expected = x.view(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    expected = expected.view(n, h // 2, w // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    assert torch.equal(eagle2.pixel_shuffle(x, 0.5), expected)


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_eagle_pipeline_matches_eager(eagle, cache):
    """Exported + compiled (eager backend) vision encoder and language model with a KV cache vs
    the project's eager model recomputing the whole sequence at every step."""
    input_ids, logits, tokens = run_pipeline(eagle, vlm_config(cache=cache, batch_size=2))
    assert (input_ids == eagle.image_token_id).sum(1).tolist() == [13 * 4, 13 * 4]
    pixels = eagle.vision_inputs(2, torch.device("cpu"))
    sequence = torch.cat([input_ids, tokens], 1)
    with torch.no_grad():
        expected = eagle.model(sequence, pixels, eagle.image_token_id)[:, input_ids.shape[1] - 1:-1]
    torch.testing.assert_close(torch.stack(logits, 1), expected[:, :len(logits)].float(), rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens, expected.argmax(-1))


@pytest.mark.parametrize("name", ["qwen", "eagle"])
def test_vision_encoder_splits_by_layer(name, request):
    """The exported vision encoders split into layer pieces that compute the same features:
    indices of modules other than the layer list (Qwen2.5-VL's merger is an nn.Sequential)
    start new pieces, never number one before an earlier layer's."""
    import export_llm
    import layer_split

    vlm = request.getfixturevalue(name)
    module, _ = vlm.static_encoder()
    pixels = vlm.vision_inputs(2, torch.device("cpu"))
    gm = export_llm.export_graph(module, [pixels.clone()], (0,), pixels.shape[0])
    split = layer_split.split_by_layer(gm)
    assert len(layer_split.pieces(split)) > 2
    with torch.no_grad():
        assert torch.equal(split(pixels)[0], gm(pixels)[0])


def original_layout(model):
    """A state dict as the published checkpoint names it (see eagle2.RENAMES), with the
    SigLIP pooling head it carries (unused here)."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("vision.vision_model.", "vision_model.vision_model.").replace("vision.mlp1.", "mlp1.")
        out[key] = value.clone()
    out["vision_model.vision_model.head.probe"] = torch.zeros(1, 1, 32)
    out.pop("language_model.lm_head.weight")  # tied to the embeddings: not saved
    return out


def test_eagle_loads_original_layout(eagle, tmp_path):
    state = original_layout(eagle.model)
    assert "vision_model.vision_model.encoder.layers.0.self_attn.q_proj.weight" in state and "mlp1.3.bias" in state
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(tiny_eagle_config()))
    loaded = eagle2.Eagle2Model.from_pretrained(tmp_path, register_sdpa.ATTN_IMPLEMENTATION, torch.float32)
    for key, value in eagle.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    del state["mlp1.1.weight"]
    state["mlp1.9.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="missing: vision.mlp1.1.weight; unexpected: vision.mlp1.9.weight"):
        eagle2.Eagle2Model.from_pretrained(tmp_path, register_sdpa.ATTN_IMPLEMENTATION, torch.float32)


# -- the command line -----------------------------------------------------------------------
def cli(capsys, *args):
    """``run_vlm.main`` in process on the CPU: (exit code, stdout, stderr)."""
    try:
        run_vlm.main(["--device", "cpu", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen")
    (folder / "config.json").write_text(json.dumps(tiny_qwen_config()))
    return folder


def test_cli_qwen_bundled_image(qwen_folder, tmp_path, capsys):
    out = tmp_path / "out.json"
    code, _, stderr = cli(capsys, "--model", str(qwen_folder), "--random_weights", "--num_tokens", "8",
                          "--vision", "compile", "--output_json", str(out))
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["image"].endswith("assets/sample.png") and result["image_tokens"] == 192
    assert result["vision"] == "compile" and result["backend"] == "eager" and result["cache"] == "static_v2"
    assert len(result["generated_token_ids"][0]) <= 8 and isinstance(result["generated_text"][0], str)
    assert "vision encoder: exported" in stderr


def test_cli_eagle_folder_benchmark(eagle, tmp_path, capsys):
    """A snapshot folder in the original layout, --benchmark with the baseline: the JSON splits
    TTFT into the vision encoder and prefill."""
    save_file(original_layout(eagle.model), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(tiny_eagle_config()))
    out = tmp_path / "bench.json"
    code, stdout, stderr = cli(capsys, "--model", str(tmp_path), "--benchmark", "--isl", "96", "--num_tokens", "4",
                               "--iterations", "2", "--enable_pytorch_run", "--output_json", str(out))
    assert code == 0, stderr
    result = json.loads(out.read_text())
    stats = result["benchmark"]
    assert result["vision"] == "compile" and result["image_tokens"] == 13 * 4 and result["isl"] == 96
    assert stats["vision_ms"] > 0 and stats["prefill_ms"] > 0
    assert math.isclose(stats["ttft_ms"], stats["vision_ms"] + stats["prefill_ms"], rel_tol=0.35)
    assert set(result["baselines"]) == {"hf_generate"}
    assert "TTFT = vision encoder" in stdout


@pytest.mark.parametrize("case", ["missing", "folder", "not_an_image", "truncated", "unreadable"])
def test_cli_bad_image(case, tmp_path, capsys):
    path = tmp_path / "image.png"
    if case == "folder":
        path = tmp_path
    elif case == "not_an_image":
        path.write_text("hello")
    elif case == "truncated":
        path.write_bytes((ROOT / "assets" / "sample.png").read_bytes()[:200])
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_bytes((ROOT / "assets" / "sample.png").read_bytes())
        path.chmod(0)
    code, _, stderr = cli(capsys, "--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--random_weights", "--image_path",
                          str(path))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --image_path {path}"), stderr
