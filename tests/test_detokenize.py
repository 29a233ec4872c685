"""detokenize.Detokenizer on real offline tokenizers: the bundled SmolLM2's and the offline Qwen
one (byte-level BPE), and a Llama-2-style SentencePiece tokenizer ("▁" spaces, byte fallback)
built here from a few sentences. The streamed pieces must add up to the full decode and never
show half a character."""

import json
import random

import pytest
import transformers
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models

import models
from detokenize import CONTEXT, Detokenizer, decode

TEXTS = [
    "The capital of France is Paris.",
    "Emoji 😀🦜 and a family 👨‍👩‍👧 in a row",
    "日本語のテキストと中文字符，混在。",
    "Accents: café, naïve, Ångström, Łódź, ἀρχή",
    "Spaces:  two,   three,\tand a tab\n\nthen new lines\n  indented",
    " leading space and trailing space ",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ",
]


def sentencepiece_tokenizer():
    """A Llama-2-style tokenizer: BPE over "▁"-joined words with byte fallback for anything not
    in its tiny vocabulary (emoji, CJK, accents become <0xXX> tokens), and Llama 2's decoder."""
    words = ["The capital of France is Paris.", "Hello world, hello there!", "What is the answer?  Forty two.\n"]
    tokenizer = Tokenizer(tokenizer_models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.train_from_iterator(words, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    trained = json.loads(tokenizer.to_str())["model"]
    vocab = dict(trained["vocab"])
    for byte in range(256):  # ordinary tokens, as in Llama 2 (not special: decode must keep them)
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer.model = tokenizer_models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers():
    qwen = models.offline_tokenizer_dir(models.load_config("Qwen/Qwen2.5-0.5B-Instruct", True))
    return {
        "smollm2": transformers.AutoTokenizer.from_pretrained(str(models.smollm2_dir())),
        "qwen": transformers.AutoTokenizer.from_pretrained(str(qwen)),
        "sentencepiece": sentencepiece_tokenizer(),
    }


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stream(tokenizer, ids, prompt_ids=()):
    """The pieces pushed and flushed, in order."""
    detokenizer = Detokenizer(tokenizer, prompt_ids)
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


def byte_level_ids(tokenizer, text):
    """``text`` as one token per UTF-8 byte (GPT-2's byte-to-character table), so that every
    multi-byte character is split across tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in table)})
    return tokenizer.convert_tokens_to_ids([table[b] for b in text.encode()])


@pytest.mark.parametrize("name", ["smollm2", "qwen", "sentencepiece"])
def test_pieces_add_up_to_the_full_decode(tokenizers, name):
    tokenizer = tokenizers[name]
    for text in TEXTS:
        ids = ids_of(tokenizer, text)
        pieces = stream(tokenizer, ids)
        assert "".join(pieces) == decode(tokenizer, ids), text
        assert not any("\ufffd" in piece for piece in pieces), (text, pieces)


@pytest.mark.parametrize("name", ["smollm2", "qwen"])
def test_characters_split_byte_by_byte_wait_until_whole(tokenizers, name):
    tokenizer = tokenizers[name]
    text = "😀 日本 é 👨‍👩‍👧 𝔘"
    ids = byte_level_ids(tokenizer, text)
    assert len(ids) == len(text.encode())
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "😀" in pieces  # emitted whole once its fourth byte arrived


def test_sentencepiece_byte_fallback_waits_until_whole(tokenizers):
    tokenizer = tokenizers["sentencepiece"]
    ids = ids_of(tokenizer, "Paris 😀 日本")
    assert "<0xF0>" in tokenizer.convert_ids_to_tokens(ids)  # the emoji really is four byte tokens
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == "Paris 😀 日本" and not any("\ufffd" in piece for piece in pieces)


def test_sentencepiece_spaces_between_tokens_are_kept(tokenizers):
    # Alone, "▁is" decodes to "is": a token-by-token decode would glue the words together.
    tokenizer = tokenizers["sentencepiece"]
    ids = ids_of(tokenizer, "The capital of France is Paris.")
    assert "".join(tokenizer.decode([i]) for i in ids) == "ThecapitalofFranceisParis."
    assert stream(tokenizer, ids)[:3] == ["The", " capital", " of"]


@pytest.mark.parametrize("name", ["smollm2", "qwen", "sentencepiece"])
def test_prompt_context_gives_the_first_token_its_space(tokenizers, name):
    tokenizer = tokenizers[name]
    prompt, reply = ids_of(tokenizer, "The capital of France is"), ids_of(tokenizer, " Paris. 😀 Yes.")
    pieces = stream(tokenizer, reply, prompt)
    # exactly what the reply adds to the prompt's text
    full = decode(tokenizer, prompt + reply)
    assert "".join(pieces) == full[len(decode(tokenizer, prompt)) :] == " Paris. 😀 Yes."
    # and the reply's own decode, but for the leading space a SentencePiece decode drops
    alone = decode(tokenizer, reply)
    assert "".join(pieces) == (alone if name != "sentencepiece" else " " + alone)


def test_chat_template_prompt_as_context(tokenizers):
    tokenizer = tokenizers["smollm2"]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           return_dict=False)
    reply = ids_of(tokenizer, "Hello! How can I help you today? 😀") + [tokenizer.eos_token_id]
    pieces = stream(tokenizer, reply, prompt)
    assert "".join(pieces) == "Hello! How can I help you today? 😀"
    assert pieces[-2:] == ["", ""]  # the EOS (special) adds nothing, and nothing is left over


@pytest.mark.parametrize("name", ["smollm2", "qwen"])
def test_random_tokens_and_special_tokens(tokenizers, name):
    # Any ids at all, special ones and bytes that never form a character included: the pieces
    # still add up to the full decode (whose U+FFFD then comes out where it stands).
    tokenizer = tokenizers[name]
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tokenizer)) for _ in range(40)] + rng.sample(tokenizer.all_special_ids, 2)
        rng.shuffle(ids)
        assert "".join(stream(tokenizer, ids)) == decode(tokenizer, ids)


def test_random_sentencepiece_tokens(tokenizers):
    # Random tokens, whole characters as byte tokens, special tokens. (Not bytes that never form
    # a character: tokenizers' ByteFallback decoder then turns the whole run of byte tokens into
    # U+FFFD, valid bytes before the bad one included, which no stream can know in advance.)
    tokenizer = tokenizers["sentencepiece"]
    words = [i for t, i in tokenizer.get_vocab().items() if not t.startswith("<0x")]
    rng = random.Random(0)
    for _ in range(20):
        ids = []
        for _ in range(30):
            ids += [rng.choice(words)] if rng.random() < 0.7 else ids_of(tokenizer, rng.choice("😀日é𝔘"))
        assert "".join(stream(tokenizer, ids)) == decode(tokenizer, ids)


def test_window_stays_small(tokenizers):
    tokenizer = tokenizers["smollm2"]
    ids = ids_of(tokenizer, " ".join(TEXTS) * 20)
    detokenizer = Detokenizer(tokenizer, ids[:50])
    assert len(detokenizer.ids) == CONTEXT
    widest = 0
    for i in ids:
        detokenizer.push(i)
        widest = max(widest, len(detokenizer.ids))
    assert len(ids) > 1000 and widest <= 8  # a 4-byte character over single-byte tokens is the worst here
