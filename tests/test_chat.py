"""chat.run (run_llm.py --interactive) on the bundled SmolLM2 (real weights, eager on CPU), built
once for the module: a turn feeds only what the conversation added, and replies as a fresh run
of the whole conversation would; /reset, /exit, end of input, a conversation that outgrows the
cache, Ctrl-C during a reply."""

import dataclasses
import io

import pytest
import torch

import chat
import run_llm
from generate import generate

FRANCE, GERMANY = "What is the capital of France?", "And of Germany?"


@pytest.fixture(scope="module")
def smollm2():
    """(the built generator, its config): 128 cache positions (few: CPU attention reads them all
    in each step), replies of up to 16 tokens. One thread: beside another test worker (or any
    busy process) on two cores, two threads wait on each other, and each step takes 5-10x as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = run_llm.parse(["--interactive", "--num_tokens", "16", "--max_len", "128", "--no_build_cache"])
    yield run_llm.build(config), config
    torch.set_num_threads(threads)


def talk(built, config, *lines, stdout=None):
    """chat.run over these input lines: (its record, what it printed)."""
    stdout = stdout or io.StringIO()
    record = chat.run(built, config, io.StringIO("".join(line + "\n" for line in lines)), stdout)
    return record, stdout.getvalue()


def messages_of(turns, then=None):
    """The conversation of a record's turns, and a next user message."""
    messages = [m for t in turns for m in ({"role": "user", "content": t["user"]},
                                           {"role": "assistant", "content": t["reply"]})]
    return messages + ([{"role": "user", "content": then}] if then else [])


def fresh_reply(built, config, messages):
    """The reply of a new run on the whole conversation: the cache emptied, everything fed."""
    ids = chat.conversation_ids(built.tokenizer, messages)
    return generate(built.gen, [ids], config.num_tokens, eos_ids=built.eos_ids, sampling=config.sampling)[0]


def counting_prefill(monkeypatch, gen):
    """The positions fed to the cache by each prompt (steps of more than one position, or the first
    step of a turn), recorded in a list as they happen."""
    fed, step = [], gen.step

    def counted(x, *args, **kwargs):
        fed.append(x.shape[1])
        return step(x, *args, **kwargs)

    monkeypatch.setattr(gen, "step", counted)
    return fed


def test_second_turn_feeds_only_what_it_adds(smollm2, monkeypatch):
    built, config = smollm2
    steps = counting_prefill(monkeypatch, built.gen)
    record, out = talk(built, config, FRANCE, GERMANY)
    first, second = record["turns"]
    assert "Paris" in first["reply"] and "Berlin" in second["reply"]
    assert record["refeeds"] == 0 and first["cached_tokens"] == 0
    # The cache kept the first turn's prompt and reply (the reply's last token perhaps not fed).
    held = first["prompt_tokens"] + len(first["generated_token_ids"])
    assert second["cached_tokens"] in (held - 1, held)
    assert second["prefilled_tokens"] == second["prompt_tokens"] - second["cached_tokens"] < 20
    assert len(chat.conversation_ids(built.tokenizer, messages_of([first], GERMANY))) == second["prompt_tokens"]
    # and the model was fed exactly that: one prompt step of each turn's new positions
    assert [s for s in steps if s > 1] == [first["prompt_tokens"], second["prefilled_tokens"]]
    # Both replies shown once each, in order, and the chat ended with the input.
    assert out.count(first["reply"]) == out.count(second["reply"]) == 1
    assert out.index(first["reply"]) < out.index(second["reply"]) and out.endswith("> \n")

    # The second reply is what a new run on the whole conversation says.
    assert second["generated_token_ids"] == fresh_reply(built, config, messages_of([first], GERMANY))


def test_sampled_turn_matches_a_fresh_sampled_run(smollm2):
    # The sampler's noise depends on (seed, position, token), not on how the prompt was fed.
    built, config = smollm2
    config = dataclasses.replace(config, temperature=0.9, seed=7, num_tokens=8)
    record, _ = talk(built, config, FRANCE, GERMANY)
    first, second = record["turns"]
    assert second["cached_tokens"] > 0
    assert second["generated_token_ids"] == fresh_reply(built, config, messages_of([first], GERMANY))


def test_streamed_in_pieces(smollm2):
    built, config = smollm2

    class Pieces(io.StringIO):
        def __init__(self):
            super().__init__()
            self.pieces = []

        def write(self, text):
            self.pieces.append(text)
            return super().write(text)

    stdout = Pieces()
    record, out = talk(built, config, FRANCE, stdout=stdout)
    reply = record["turns"][0]["reply"]
    start = stdout.pieces.index("> ", 1)  # (after the greeting)
    assert "".join(stdout.pieces[start + 1 :]).startswith(reply.strip() + "\n")
    assert len(stdout.pieces) - start > 5  # one write per decoded piece, not the reply at once


def test_reset_exit_and_blank_lines(smollm2):
    built, config = smollm2
    record, out = talk(built, config, FRANCE, "", "   ", "/reset", FRANCE, "/exit", GERMANY)
    first, again = record["turns"]  # the blank lines were no turns; nothing after /exit was read
    assert record["resets"] == 1 and record["refeeds"] == 0
    assert again["cached_tokens"] == 0 and again["prompt_tokens"] == first["prompt_tokens"]
    assert again["generated_token_ids"] == first["generated_token_ids"]
    assert "a new conversation" in out and not out.endswith("> \n")  # /exit, not the end of input


def test_end_of_input_without_a_turn(smollm2):
    built, config = smollm2
    record, out = talk(built, config)
    assert record["turns"] == [] and out.endswith("> \n")


def test_outgrown_cache_says_so_and_goes_on(smollm2):
    built, config = smollm2
    # 80 new tokens: the first question (37 tokens) fits the 128 positions, the conversation then
    # (59) does not
    config = dataclasses.replace(config, num_tokens=80)
    long_message = "Please tell me " + "a lot " * 40 + "about Paris."
    record, out = talk(built, config, FRANCE, GERMANY, long_message, "/reset", FRANCE)
    assert record["overflows"] == 2 and len(record["turns"]) == 2
    assert "has outgrown the cache (128 positions): /reset to start over" in out
    assert "do not fit the cache (128 positions) even in a new conversation" in out
    assert record["turns"][1]["generated_token_ids"] == record["turns"][0]["generated_token_ids"]


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(smollm2):
    built, config = smollm2

    class Interrupted(io.StringIO):
        """Ctrl-C while the third piece of a reply is shown."""

        def __init__(self):
            super().__init__()
            self.writes = 0

        def write(self, text):
            self.writes += 1
            if self.writes == 5:  # (greeting, "> ", two pieces)
                raise KeyboardInterrupt
            return super().write(text)

    record, out = talk(built, config, FRANCE, GERMANY, stdout=Interrupted())
    assert "interrupted" in out and len(record["turns"]) == 1
    assert record["turns"][0]["user"] == GERMANY and record["turns"][0]["cached_tokens"] == 0


def test_without_a_chat_template_the_conversation_is_running_text(smollm2):
    tokenizer = smollm2[0].tokenizer
    messages = messages_of([{"user": "Once upon", "reply": " a time"}], "there")
    ids = chat.conversation_ids(tokenizer, messages, chat_template=False)
    assert tokenizer.decode(ids) == "Once upon a time\nthere"
