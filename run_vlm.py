"""Run a vision-language model (Qwen2.5-VL or Eagle2) on an image and a prompt: the vision
encoder (eager, or exported and compiled), then the language model through torch.export, the
attention op, a KV cache pass and a compiler backend, as run_llm.py does for text; with
--benchmark, time it (TTFT split into vision encoder and prefill, TPOT) against PyTorch baselines.

    python run_vlm.py --model Qwen/Qwen2.5-VL-3B-Instruct --random_weights      # bundled sample image
    python run_vlm.py --model nvidia/Eagle2-2B --random_weights --benchmark --image_path photo.jpg
    python run_vlm.py --model ~/models/Qwen2.5-VL-3B-Instruct --prompt "What is in the picture?"
"""

import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

import backends
import benchmark
import build_cache
import cli
import eagle2
import export_llm
import models
import passes
import tensor_parallel
from config import VISION_MODES, RunConfig
from pipeline import build_generator, generate_text, run_record
from utils import UserError, log, resolve_device
from vision_language import VisionLanguageModel, model_family

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_PROMPT = "Describe this image."
SAMPLE_IMAGE = Path(__file__).resolve().parent / "assets" / "sample.png"  # made by assets/make_sample.py
TEXT_TOKENS = 151643  # ids below this are plain text in the Qwen2 vocabulary (both models use it)


def load_image(path):
    """The image as RGB, or one UserError line: missing, unreadable, or not an image."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--image_path {path}: no such file")
    if path.is_dir():
        raise UserError(f"--image_path {path}: is a folder, not an image file")
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:  # animated GIF/WebP/PNG, or a multi-page TIFF
                log(f"--image_path {path}: {frames} frames; only the first is used")
            image.load()  # the first frame: Image.open leaves the file there
            return _to_rgb(ImageOps.exif_transpose(image))  # as the camera was held (EXIF orientation 1-8)
    except Image.UnidentifiedImageError:
        raise UserError(f"--image_path {path}: not an image file (PNG, JPEG, WebP, ... expected)") from None
    except PermissionError:
        raise UserError(f"--image_path {path}: permission denied") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--image_path {path}: cannot read the image ({why})") from None


# Samples wider than 8 bits, scaled to 0..255 with rounding (a plain convert would clip them):
# "I;16*" and "I" as 0..65535, the range Pillow gives 16-bit PNG/TIFF ("I;16") and PGM of any maxval
# ("I", scaled to 0..65535), so 65535 -> 255 and 32768 -> 128; "F" as 0.0..1.0, the usual range of
# float images. Values outside the range (negative, 32-bit integers above 65535, floats above 1) saturate.
_WIDE_SCALE = {"I": 255 / 65535, "F": 255}


def _to_rgb(image):
    """An opened image of any mode as RGB."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode in _WIDE_SCALE:
        scale = _WIDE_SCALE[image.mode]
        image = image.point(lambda v: v * scale + 0.5).convert("L")  # + 0.5 rounds: Pillow truncates
    if image.has_transparency_data:  # alpha band, or a transparent palette index / colour
        # Over white, as viewers and documents show transparent images (qwen-vl-utils does the same):
        # dropping alpha instead would show whatever colour the transparent pixels hold, often black.
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...: Pillow's conversions


def build_vision(vlm: VisionLanguageModel, mode, config, identity=None):
    """A callable returning the image features [B, tokens, H], eager or exported and compiled
    (through the build cache, with ``identity``). Returns it, the mode that applies, and its
    compile time (seconds)."""
    pixels = vlm.vision_inputs(config.batch_size, config.torch_device)
    if mode == "compile":
        module, why_not = vlm.static_encoder()
        if module is None:
            log(f"vision encoder: eager ({why_not})")
            mode = "eager"
    if mode == "eager":
        encoder, compile_s = vlm.eager_encoder(), 0.0
        log(f"vision encoder: eager ({vlm.name}'s own module)")
    else:
        start = time.perf_counter()
        count = max(2, pixels.shape[0])  # images or tiles: export wants an example of >= 2
        vision = passes.Graph(config, count, kind="vision")
        what = f"vision encoder {tuple(pixels.shape[1:])}"
        with build_cache.building(config, what, count, module, identity) as build:
            if build.graphs is None:
                example = torch.cat([pixels[:1], pixels[:1]]).clone()
                gm, _ = passes.run("graph", export_llm.export_graph(module, [example], (0,), count), vision)
                build.keep({"vision": gm})
            graph = backends.compile_graph(build.graphs["vision"], config, count, passes.tuned(vision),
                                           build.engine_path("vision"))

            def encoder(x):
                return graph(x)[0]

            encoder(pixels)  # compilers compile on the first call: do it now, not in a timed run
            if config.on_cuda:
                torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        log(f"vision encoder: {build.status if build.status == 'loaded' else 'exported'} for input "
            f"{tuple(pixels.shape[1:])} and compiled with {config.backend} ({compile_s:.1f} s)")

    def encode():
        return vlm.to_features(encoder(pixels), config.batch_size)

    return encode, mode, compile_s


def example_inputs(vlm: VisionLanguageModel, batch_size, hidden, dtype, device):
    """Fresh (inputs_embeds, position_ids) of a given length, as export wants them."""

    def make(length):
        embeds = torch.randn(batch_size, length, hidden, dtype=dtype, device=device)
        positions = torch.arange(length, device=device).repeat(batch_size, 1)
        if vlm.position_seq_dim == 2:  # M-RoPE: (3, B, S)
            positions = positions[None].repeat(3, 1, 1)
        return embeds, positions

    return make


def prompt_input_ids(vlm: VisionLanguageModel, config):
    """[B, S] prompt ids: the image and the prompt (or, with --benchmark, random text ids that
    fill the prompt up to --isl tokens)."""
    chat = config.chat_template
    if config.benchmark:
        if vlm.tokenizer is None:
            chat = False
        bare = len(vlm.prompt_ids([], chat))
        generator = torch.Generator().manual_seed(0)
        filler = torch.randint(0, TEXT_TOKENS, (max(0, config.isl - bare),), generator=generator).tolist()
        ids = vlm.prompt_ids(filler, chat)
        if len(ids) > config.isl:
            log(f"benchmark prompt: {len(ids)} tokens (the image alone takes {vlm.num_image_tokens}, "
                f"more than --isl {config.isl})")
    else:
        models.require_tokenizer(vlm.tokenizer, config.model_name)
        ids = vlm.prompt_ids(vlm.encode_text(config.prompts[0] if config.prompts else DEFAULT_PROMPT), chat)
    return torch.tensor([ids] * config.batch_size, device=config.torch_device)


def add_vlm_args(parser):
    cli.add_common_args(parser)
    parser._option_string_actions["--model"].help = (
        f"Qwen/Qwen2.5-VL-3B-Instruct, nvidia/Eagle2-2B or a local folder of either (default {DEFAULT_MODEL})"
    )
    parser.set_defaults(model=DEFAULT_MODEL)
    parser._option_string_actions["--precision"].help = "compute dtype (default: BF16 on GPU, FP32 on CPU)"
    parser.add_argument("--image_path", help="the image (default: the bundled assets/sample.png)")
    parser.add_argument(
        "--vision", default="auto", choices=VISION_MODES,
        help="vision encoder: eager (the model's own module, any image size) or compile (exported and compiled "
             "with --backend; Qwen2.5-VL resizes the image to multiples of 112 px for it). auto: compile for "
             "Eagle2 (fixed 448 px tiles), eager for Qwen2.5-VL",
    )
    parser.add_argument("--max_tiles", type=cli.positive_int, help="Eagle2: at most this many 448 px tiles "
                        "(default: the config's max_dynamic_patch, 12)")
    return parser


def parse(argv=None) -> RunConfig:
    """The command line as a resolved RunConfig."""
    args = add_vlm_args(cli.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    args.image_path = args.image_path or str(SAMPLE_IMAGE)
    load_image(args.image_path)  # before anything slow: a bad path fails at once
    args.device = str(tensor_parallel.setup(args.tp, resolve_device(args.device), "run_vlm.py"))
    model_config = models.load_config(args.model, args.random_weights)
    tensor_parallel.check(model_config, args.tp)
    if args.max_tiles and model_family(model_config) is not eagle2.Eagle2VL:
        raise UserError("--max_tiles is for Eagle2 (Qwen2.5-VL does not tile images)")
    if len(args.prompts or ()) > 1 or args.stream:
        raise UserError("run_vlm.py takes one --prompt about its image and prints the answer whole")
    return cli.run_config(args, model_config, vision_language=True)


def build(vlm, config, input_ids, mode, max_len, identity=None):
    """The vision encoder (``mode``: eager or compile) and the language model's Generator for
    the prompt ``input_ids``. Returns the Generator; ``vision()``, which encodes the image and
    merges it into the prompt (the part of TTFT before prefill) and returns the prompt's
    ``(inputs_embeds, position_ids)``; those, computed once; the vision mode that applied;
    timings in seconds; and what the build cache did for the language model. ``identity``: the
    weights' (``build_cache.model_identity``), for the build cache; None leaves it out."""
    position_ids = vlm.positions(input_ids)
    encode, mode, vision_compile_s = build_vision(vlm, mode, config, identity)

    def vision():
        return vlm.embed(input_ids, encode()), position_ids

    embeds, _ = vision()
    make_inputs = example_inputs(vlm, config.batch_size, vlm.text_config.hidden_size, config.dtype, config.torch_device)
    gen, timings, cached = build_generator(
        vlm.lm_module, make_inputs, (1, vlm.position_seq_dim), config, max_len, (embeds, position_ids), identity
    )
    timings["vision_compile_s"] = vision_compile_s
    return gen, vision, (embeds, position_ids), mode, timings, cached


def run(config: RunConfig) -> dict:
    """Load, build (vision encoder and language model), then generate or benchmark; returns the
    run's JSON record (also written to --output_json)."""
    device = config.torch_device
    image = load_image(config.image_path)
    model_config = models.load_config(config.model, config.random_weights)
    family = model_family(model_config)
    log(f"loading {config.model} ({'random weights' if config.random_weights else 'weights'}, {config.precision}, "
        f"{device})")
    start = time.perf_counter()
    vlm = family.load(config.model, config.random_weights, config.dtype, device, config.max_tiles)
    if config.tokenizer:
        vlm.set_tokenizer(models.override_tokenizer(config.tokenizer, vlm.text_config))
    load_s = time.perf_counter() - start

    mode = vlm.default_vision if config.vision == "auto" else config.vision
    vlm.set_image(image, compiled=mode == "compile")
    input_ids = prompt_input_ids(vlm, config)
    prompt_len = input_ids.shape[1]
    max_len = models.cache_length(vlm.text_config, prompt_len, config.num_tokens, config.benchmark, config.max_len)
    identity = build_cache.model_identity(vlm.source, config.random_weights, model_config)
    gen, vision, (embeds, position_ids), mode, timings, cached = build(vlm, config, input_ids, mode, max_len,
                                                                       identity)
    timings["load_s"] = load_s
    result = run_record(config, vlm.source, prompt_len, max_len, timings, cached, vlm.text_model,
                        image=config.image_path, image_tokens=vlm.num_image_tokens, vision=mode)
    if config.benchmark:
        result["benchmark"] = benchmark.run(gen, input_ids, config, vlm.text_model, vision=vision,
                                            embed=vlm.embed_tokens, decode_positions=vlm.decode_positions)
        if config.enable_pytorch_run:
            model, extra_inputs = vlm.baseline(input_ids, vlm.vision_inputs(config.batch_size, device))
            result["baselines"] = benchmark.run_baselines(model, input_ids, config, extra_inputs, vlm.text_model)
        benchmark.report(result, config)
    else:
        result.update(generate_text(gen, embeds, position_ids, input_ids, config, vlm.tokenizer, vlm.eos_ids(),
                                    embed=vlm.embed_tokens, decode_positions=vlm.decode_positions))
    cli.write_result(result, config)
    return result


main = cli.command(parse, run)


if __name__ == "__main__":
    main()
