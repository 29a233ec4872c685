"""The cache of built models: a run whose build key matches an earlier one loads what that run
built (the rewritten graphs, Inductor's compiled artifacts, TensorRT engines) instead of
exporting and compiling again.

    python build_cache.py list            # what is cached, where, how big
    python build_cache.py clear [KEY...]  # remove all entries, or the ones named
    python build_cache.py clear --stale   # remove the entries built by another toolkit or torch

An entry lives in ``$TLLM_CACHE/builds/<key>/`` (``~/.cache/tllm/builds``; ``TLLM_BUILD_CACHE``
names another folder). The key is a hash of
everything that changes what is built: the model's files (names, sizes, modification times; the
config for random weights), the run config's build fields, the cache length, the device and
card, the torch/transformers/triton versions and the toolkit's own source. An entry holds:

- ``graphs.pkl``: the graphs after every pass, node by node. Weights are not copied: they are
  references to the loaded model's tensors by name, and a fused q/k/v or gate/up weight is the
  names it is fused from, so an entry is small and loading binds the graphs to the weights just
  loaded.
- ``inductor.bin``: the artifacts Inductor recorded while compiling and warming up the build
  (``torch.compiler.save_cache_artifacts``: its FX-graph, AOTAutograd and autotuning caches,
  Triton binaries included). Loading puts them back into Inductor's own caches, so the same
  ``torch.compile`` calls find every kernel compiled and tuned.
- ``*.ep``: TensorRT engines (``torch_tensorrt.save`` / ``load``).
- ``manifest.json``, written last: the key's fields and each file's size and SHA-256. An entry
  that fails this check (truncated, edited, from another format) is removed and rebuilt.

Entries are built in a private staging folder and published with one ``rename``, so two
processes building one entry at once leave one whole entry, never a mix.
"""

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import files
import models
import tensor_parallel
from export_llm import attribute
from utils import UserError, log

FORMAT = 1
TOOLKIT = Path(__file__).resolve().parent
# RunConfig fields that do not change what is built (what to run it on, what to measure, where to
# write); every other field is part of the key, so a new build option is keyed by default.
NOT_BUILD_FIELDS = {"model", "tokenizer", "prompts", "chat_template", "image_path", "num_tokens", "ignore_eos",
                    "interactive", "stream", "max_len", "temperature", "top_k", "top_p", "seed",
                    "benchmark", "isl", "iterations", "warmup", "enable_pytorch_run", "baselines", "profile",
                    "mixed_lengths", "output_json", "results_csv", "debug", "build_cache"}
HASHED_UP_TO = 256 << 20  # larger files (TensorRT engines) are checked by size only


def root():
    """``$TLLM_BUILD_CACHE``, or ``builds`` in the toolkit's cache folder (``$TLLM_CACHE``)."""
    return Path(os.environ.get("TLLM_BUILD_CACHE") or models.CACHE_DIR / "builds")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def toolkit_version():
    """A hash of the toolkit's own modules: a changed pass or kernel must not load an old build."""
    digest = hashlib.sha256()
    for path in sorted(TOOLKIT.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def model_identity(source, random_weights, model_config):
    """What the weights are: the config and seed of random weights, else the model folder's files
    (name, size, modification time; hashing gigabytes of weights on every run would cost more
    than it saves). A hub id is looked up in the local Hugging Face cache."""
    if random_weights:
        return {"random_weights": model_config.to_json_string(use_diff=False), "seed": 0}
    folder = Path(source)
    if not folder.is_dir():
        import huggingface_hub

        try:
            folder = Path(huggingface_hub.snapshot_download(str(source), local_files_only=True))
        except Exception:  # not in the local cache as a whole snapshot: the id (and revision) is all we know
            return {"hub_id": str(source)}
    listing = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            listing.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return {"folder": str(folder.resolve()), "files": listing}


def _device_identity(config):
    if not config.on_cuda:
        return {"type": "cpu"}
    device = config.torch_device
    return {"type": "cuda", "name": torch.cuda.get_device_name(device),
            "capability": list(torch.cuda.get_device_capability(device))}


def _versions(config):
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__}
    with contextlib.suppress(ImportError):
        import triton

        found["triton"] = triton.__version__
    if config.backend == "tensorrt":
        import torch_tensorrt

        found["torch_tensorrt"] = torch_tensorrt.__version__
    return found


def key_fields(config, what, length, identity):
    """Everything the key hashes, as JSON-ready fields (also kept in the manifest)."""
    build = {k: v for k, v in asdict(config).items() if k not in NOT_BUILD_FIELDS}
    return {"format": FORMAT, "what": what, "length": length, "model_name": config.model_name, "model": identity,
            "config": build, "device": _device_identity(config), "versions": _versions(config),
            "toolkit": toolkit_version(),
            # a rank's graphs hold its slices and its collectives (rank 0 alone adds row-split biases)
            **({"tensor_parallel": [tensor_parallel.rank(), tensor_parallel.world()]}
               if tensor_parallel.active() else {})}


def key_of(fields):
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


# A graph is stored node by node (name, op, target, arguments), not as a GraphModule's pickle,
# which keeps only its code and traces it again on load: that trace folds what it can compute
# (the rotary tables, the position mask's arange) into constants, so the loaded graph, and the
# key Inductor's caches file it under, would differ from the one built. Weights are stored by
# reference: a tensor of the model is its name; a fused weight is the names it was fused from
# (fuse_linears), fused again from the loaded model.


@dataclass(frozen=True)
class _Node:
    name: str


@dataclass(frozen=True)
class _Op:
    name: str  # e.g. "aten::index_copy_" or "tllm::cached_attention.default"

    def resolve(self):
        namespace, qualified = self.name.split("::")
        name, _, overload = qualified.partition(".")
        return getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")


def _graph_record(gm):
    """A GraphModule as plain data: its nodes, the attributes its nodes read (tensors, or the
    records of submodules: a graph split by layer calls one per piece) and its ``meta``."""
    def plain(value):
        return torch.fx.node.map_aggregate(value, lambda v: _Node(v.name) if isinstance(v, torch.fx.Node) else v)

    nodes, attrs = [], {}
    for node in gm.graph.nodes:
        target = _Op(node.target.name()) if isinstance(node.target, torch._ops.OpOverload) else node.target
        nodes.append((node.name, node.op, target, plain(node.args), plain(node.kwargs)))
        if node.op == "get_attr":
            attrs[node.target] = gm.get_parameter(node.target) if _is_parameter(gm, node.target) else \
                attribute(gm, node.target)
        elif node.op == "call_module":
            attrs[node.target] = _graph_record(gm.get_submodule(node.target))
    return {"nodes": nodes, "attrs": attrs, "meta": dict(gm.meta)}


def _is_parameter(gm, target):
    module, _, name = target.rpartition(".")
    return name in gm.get_submodule(module)._parameters


def _graph_module(record):
    graph, env = torch.fx.Graph(), {}

    def live(value):
        return torch.fx.node.map_aggregate(value, lambda v: env[v.name] if isinstance(v, _Node) else v)

    for name, op, target, args, kwargs in record["nodes"]:
        target = target.resolve() if isinstance(target, _Op) else target
        env[name] = graph.create_node(op, target, live(args), live(kwargs), name=name)
    root = {target: _graph_module(value) if isinstance(value, dict) else value
            for target, value in record["attrs"].items()}
    gm = torch.fx.GraphModule(root, graph)
    gm.meta.update(record["meta"])
    return gm


class _GraphPickler(pickle.Pickler):
    def __init__(self, buffer, references):
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.references = references

    def persistent_id(self, obj):
        return self.references.get(id(obj)) if isinstance(obj, torch.Tensor) else None


def _model_tensors(module):
    """{name: tensor} of every parameter and buffer, tied ones under each of their names."""
    return {**dict(module.named_parameters(remove_duplicate=False)),
            **dict(module.named_buffers(remove_duplicate=False))}


class _GraphUnpickler(pickle.Unpickler):
    def __init__(self, buffer, module):
        super().__init__(buffer)
        self.tensors = _model_tensors(module)
        self.fused, self.quantized = {}, {}

    def persistent_load(self, pid):
        kind, name = pid
        if kind == "model":
            return self.tensors[name]
        if kind == "quantized":  # quantized again from the weight it was made of
            source, transposed, *how = name
            part, key = how.pop(2), (source, transposed, *how[:2])
            if key not in self.quantized:
                import quantize

                self.quantized[key] = quantize.requantize(self.persistent_load(source), transposed, *how)
            return self.quantized[key][part]
        if name not in self.fused:  # one fused tensor for every graph that reads it
            import fuse_linears

            self.fused[name] = fuse_linears.fuse([self.tensors[n] for n in name])
        return self.fused[name]


def _references(module, graphs):
    references = {id(t): ("model", name) for name, t in _model_tensors(module).items()}
    for gm in graphs.values():
        fused = gm.meta.get("fused_from", {})
        for name, sources in fused.items():
            if hasattr(gm, name):  # (not where quantized copies replaced it)
                references[id(gm.get_parameter(name))] = ("fused", tuple(sources))
        for name, (target, *how) in gm.meta.get("quantized_from", {}).items():
            source = ("fused", tuple(fused[target])) if target in fused else ("model", target)
            references[id(attribute(gm, name))] = ("quantized", (source, *how))
    return references


def dump_graphs(module, graphs):
    """``graphs`` ({name: GraphModule}) as bytes, with ``module``'s tensors by reference."""
    buffer = io.BytesIO()
    _GraphPickler(buffer, _references(module, graphs)).dump({k: _graph_record(gm) for k, gm in graphs.items()})
    return buffer.getvalue()


def load_graphs(data, module):
    """The graphs of ``dump_graphs``, reading ``module``'s tensors (same names as when dumped)."""
    import register_sdpa  # noqa: F401  (the ops the graphs call must exist to be resolved)

    records = _GraphUnpickler(io.BytesIO(data), module).load()
    return {name: _graph_module(record) for name, record in records.items()}


@dataclass
class Build:
    """One build's cache entry: ``graphs`` is what a matching entry held (None: build them and
    ``keep`` them); ``engine_path(name)`` is where a TensorRT engine is loaded from or saved to."""

    key: str
    fields: dict
    module: torch.nn.Module
    graphs: dict | None = None
    status: str = "off"  # off (--no_build_cache, or no identity), loaded, built
    entry: Path | None = None
    stage: Path | None = None
    graph_bytes: bytes | None = None
    stored_artifacts: list = field(default_factory=list)
    load_s: float = 0.0
    save_s: float = 0.0

    def keep(self, graphs):
        """The graphs just built, pickled now (compiling replaces a split graph's pieces);
        returns them."""
        self.graphs = graphs
        if self.status == "built":
            self.graph_bytes = dump_graphs(self.module, graphs)
        return graphs

    def engine_path(self, name):
        folder = self.entry if self.status == "loaded" else self.stage
        return None if folder is None else folder / f"{name}.ep"


def record(build):
    """For the run's JSON: what the build cache did (off, loaded or built) and where."""
    if build.status == "off":
        return {"status": "off"}
    return {"status": build.status, "key": build.key, "entry": str(root() / build.key)}


def _check(entry):
    """The entry's manifest if every file it lists is whole, else why not (a phrase)."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except FileNotFoundError:
        return None, "no manifest"
    except (OSError, ValueError) as e:
        return None, f"unreadable manifest ({e})"
    if manifest.get("format") != FORMAT:
        return None, f"format {manifest.get('format')}, not {FORMAT}"
    for name, (size, sha) in manifest["files"].items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != size:
            return None, f"{name} is missing or truncated"
        if sha and _sha256(path) != sha:
            return None, f"{name} does not match its checksum"
    return manifest, None


def _remove(entry, why):
    log(f"build cache: removing entry {entry.name} ({why}); building it again")
    trash = entry.parent / f".trash-{entry.name}-{os.getpid()}"
    with contextlib.suppress(OSError):
        os.rename(entry, trash)  # gone at once for every reader, deleted at leisure
        shutil.rmtree(trash, ignore_errors=True)


def _load_artifacts(path):
    if not path.exists():
        return []
    info = torch.compiler.load_cache_artifacts(path.read_bytes())
    if info is None:
        raise ValueError("Inductor could not read its artifacts")
    return sorted(_artifact_keys(info))


def _artifact_keys(info):
    return {f"{kind}:{key}" for kind, keys in vars(info).get("artifacts", {}).items() for key in keys}


@contextlib.contextmanager
def building(config, what, length, module, identity):
    """The cache entry of one build, around the code that builds, compiles and warms it up:

        with build_cache.building(config, "language model", max_len, module, identity) as build:
            graphs = build.graphs or build.keep(export_and_rewrite(...))
            ... compile graphs, run them once ...

    ``identity`` (``model_identity``) None, or ``--no_build_cache``, leaves the cache out."""
    if identity is not None and config.quant_format and config.backend == "tensorrt":
        log("build cache: off for ModelOpt-quantized TensorRT builds (their graphs read ModelOpt's calibrated scales)")
        identity = None
    if identity is None:
        yield Build("", {}, module)
        return
    build = _open(config, what, length, module, identity)
    if build.status == "off":
        yield build
        return
    with _recording():
        try:
            yield build
        except BaseException:
            if build.stage is not None:  # a build that failed leaves nothing behind
                shutil.rmtree(build.stage, ignore_errors=True)
            raise
        _finish(build)


def _open(config, what, length, module, identity):
    """The build for these fields: a loaded entry's graphs, or a Build to fill and publish."""
    fields = key_fields(config, what, length, identity)
    build = Build(key_of(fields), fields, module)
    if not config.build_cache:
        return build
    entry = root() / build.key
    if entry.is_dir():
        start = time.perf_counter()
        manifest, problem = _check(entry)
        if manifest is not None:
            try:
                build.graphs = load_graphs((entry / "graphs.pkl").read_bytes(), module)
                build.stored_artifacts = _load_artifacts(entry / "inductor.bin")
            except Exception as e:  # noqa: BLE001  (any failure to read an entry is a reason to rebuild it)
                problem = f"cannot load it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                build.graphs = None
        if problem is None:
            build.status, build.entry, build.load_s = "loaded", entry, time.perf_counter() - start
            log(f"build cache: loaded {what} from {entry} ({build.load_s:.1f} s)")
            return build
        _remove(entry, problem)
    problem = files.folder_problem(root())
    if problem:
        log(f"build cache: off for this run ({problem}); set TLLM_BUILD_CACHE (or TLLM_CACHE) to a writable folder")
        return build
    root().mkdir(parents=True, exist_ok=True)
    build.status = "built"
    build.stage = Path(tempfile.mkdtemp(dir=root(), prefix=f".staging-{build.key}-{os.getpid()}-"))
    return build


@contextlib.contextmanager
def _recording():
    """Record the Inductor artifacts of the block alone (``_finish`` serialises them)."""
    from torch.compiler._cache import CacheArtifactManager

    with CacheArtifactManager.with_fresh_cache():
        yield


def _finish(build):
    """After the build compiled and warmed up (inside ``recording``): publish a new entry, or
    refresh a loaded one whose run compiled something it did not hold (a new prompt length)."""
    start = time.perf_counter()
    serialized = torch.compiler.save_cache_artifacts()
    artifacts = sorted(_artifact_keys(serialized[1])) if serialized else []
    if build.status == "loaded":
        if set(artifacts) <= set(build.stored_artifacts):
            return
        build.stage = Path(tempfile.mkdtemp(dir=root(), prefix=f".staging-{build.key}-{os.getpid()}-"))
        build.graph_bytes = (build.entry / "graphs.pkl").read_bytes()
        for engine in build.entry.glob("*.ep"):
            shutil.copy2(engine, build.stage / engine.name)
    stage = build.stage
    try:
        (stage / "graphs.pkl").write_bytes(build.graph_bytes)
        if serialized:
            (stage / "inductor.bin").write_bytes(serialized[0])
        listed = {}
        for path in sorted(stage.iterdir()):
            size = path.stat().st_size
            listed[path.name] = [size, _sha256(path) if size <= HASHED_UP_TO else None]
        manifest = dict(format=FORMAT, key=build.key, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                        fields=build.fields, files=listed, artifacts=artifacts)
        files.write_json(stage / "manifest.json", manifest)
        _publish(stage, root() / build.key, replace=build.status == "loaded")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _remove_abandoned()
    build.save_s = time.perf_counter() - start


def _publish(stage, entry, replace):
    """Move the staged entry into place in one rename. Another process may have published the
    same key meanwhile: its entry is as good as ours, so ours is dropped."""
    if replace and entry.exists():
        old = entry.parent / f".trash-{entry.name}-{os.getpid()}"
        with contextlib.suppress(OSError):
            os.rename(entry, old)
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(stage, entry)
    except OSError:  # the entry exists (a concurrent builder won): keep it
        return
    log(f"build cache: {'updated' if replace else 'saved'} {entry}")


def _remove_abandoned():
    """Staging and trash folders of processes that no longer run (killed mid-build)."""
    for path in root().glob(".*-*"):
        try:
            pid = int(path.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def entries():
    """[(key folder, manifest or None, size in bytes)] of the published entries."""
    found = []
    for entry in sorted(root().glob("[!.]*")) if root().is_dir() else []:
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        found.append((entry, manifest, sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())))
    return found


def _stale(manifest):
    """An entry that no run of this toolkit and torch can load again (built by another version)."""
    fields = manifest["fields"] if manifest else {}
    return manifest is None or fields.get("toolkit") != toolkit_version() or \
        fields.get("versions", {}).get("torch") != torch.__version__


def _summary(manifest):
    if manifest is None:
        return "(unreadable: rebuilt on next use)"
    f = manifest["fields"]
    c = f["config"]
    return (f"{f['model_name']}  {f['what']}  {c['backend']} {c['precision']} cache={c['cache'] or 'none'} "
            f"len={f['length']} batch={c['batch_size']}{' cudagraph' if c['cudagraph'] else ''}  "
            f"{f['device'].get('name', f['device']['type'])}  {manifest['created']}"
            + ("  (stale: another toolkit or torch version)" if _stale(manifest) else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description="List or clear the cache of built models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the entries: key, what was built, size")
    clear = sub.add_parser("clear", help="remove every entry, or the ones named")
    clear.add_argument("keys", nargs="*", help="keys (or their first characters) to remove")
    clear.add_argument("--stale", action="store_true",
                       help="only the entries built by another toolkit or torch version (never loaded again)")
    args = parser.parse_args(argv)
    found = entries()
    if args.command == "list":
        print(f"{root()}: {len(found)} entries, {sum(size for *_, size in found) / 1e6:.1f} MB")
        for entry, manifest, size in found:
            print(f"{entry.name[:12]}  {size / 1e6:8.1f} MB  {_summary(manifest)}")
        return 0
    chosen = [e for e in found if (not args.keys or any(e[0].name.startswith(k) for k in args.keys))
              and (not args.stale or _stale(e[1]))]
    unknown = [k for k in args.keys if not any(e[0].name.startswith(k) for e in found)]
    if unknown:
        raise UserError(f"no cache entry starts with {', '.join(unknown)}")
    for entry, _, _ in chosen:
        shutil.rmtree(entry, ignore_errors=True)
    if not args.keys and not args.stale:
        for path in root().glob(".*") if root().is_dir() else []:
            shutil.rmtree(path, ignore_errors=True)
    print(f"removed {len(chosen)} entries from {root()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
