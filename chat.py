"""--interactive: a multi-turn chat on the terminal over one built generator.

The KV cache keeps the conversation between turns: each turn templates the whole conversation
and feeds only what it adds to the ids the cache holds (the reply's end and the new message).
Where the new template does not start with those ids (a template that rewrites earlier turns,
a reply that tokenizes differently as text), the cache is emptied and the whole conversation
fed again; only the record says so. The reply is streamed as it is decoded.
"""

import sys
import time

from detokenize import decode, printer
from generate import generate
from utils import UserError

HELP = "/reset starts a new conversation, /exit or end of input ends it"


def conversation_ids(tokenizer, messages, chat_template=True):
    """The conversation's prompt ids, ending where the assistant's next reply starts. Without a
    chat template it is one running text: each reply continues its message, each message
    starts a line."""
    if chat_template and tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    text = "".join(("\n" if m["role"] == "user" and i else "") + m["content"] for i, m in enumerate(messages))
    return list(tokenizer(text)["input_ids"])


def overflow(tokenizer, config, message, ids, max_len):
    """None where the conversation ``ids`` and a whole reply fit the cache, else what to do (one line)."""
    if len(ids) + config.num_tokens - 1 <= max_len:  # (the last new token is never fed)
        return None
    alone = conversation_ids(tokenizer, [message], config.chat_template)
    if len(alone) + config.num_tokens - 1 > max_len:
        return (f"this message ({len(alone)} tokens) and a reply of up to {config.num_tokens} tokens do not fit the "
                f"cache ({max_len} positions) even in a new conversation: shorten it, or rerun with a larger "
                "--max_len or a smaller --num_tokens")
    return (f"the conversation ({len(ids)} tokens with this message) has outgrown the cache ({max_len} positions): "
            "/reset to start over, or rerun with a larger --max_len")


def reply(gen, tokenizer, ids, kept, config, stop, stdout):
    """Generate the reply to the conversation ``ids``, of which the cache holds the first
    ``kept``; streams its text to ``stdout``. Returns (new tokens, seconds until the first one
    was read back: a step later than it was computed, as the next step runs while it is read)."""
    def write(piece):
        stdout.write(piece)
        stdout.flush()

    # (the reply's leading spaces are not shown; the text kept for the template has them)
    show, end = printer(tokenizer, ids, write, skip=set(stop))
    start, first = time.perf_counter(), []

    def on_step(tokens):
        if not first:
            first.append(time.perf_counter() - start)
        show(tokens)

    tokens = generate(gen, [ids[kept:]], config.num_tokens, eos_ids=stop, sampling=config.sampling,
                      on_step=on_step, chunk=config.prefill_chunk, keep=kept > 0)[0]
    end()
    return tokens, first[0] if first else None


def run(built, config, stdin=sys.stdin, stdout=sys.stdout):
    """Chat until /exit or the end of ``stdin``; returns the record's fields: each turn's
    tokens (``prefilled_tokens``: what the turn fed the cache, ``cached_tokens``: what it found
    there), ``refeeds`` (turns that fed the whole conversation again), ``resets`` and
    ``overflows`` (messages refused for lack of cache)."""
    gen, tokenizer = built.gen, built.tokenizer
    if gen.batch_size != 1:
        raise UserError("--interactive holds one conversation: it needs --batch_size 1")
    stop = [] if config.ignore_eos else list(built.eos_ids)
    messages, fed = [], []  # the conversation; the exact ids the cache holds
    record = {"turns": [], "refeeds": 0, "resets": 0, "overflows": 0}

    def say(line):
        stdout.write(line + "\n")
        stdout.flush()

    say(f"chatting with {config.model_name} ({HELP})")
    while True:
        stdout.write("> ")
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:  # end of input (Ctrl-D): the cursor is still after the prompt
            stdout.write("\n")
            return record
        text = line.strip()
        if text == "/exit":
            return record
        if text == "/reset":
            messages, fed = [], []
            gen.reset()
            record["resets"] += 1
            say("(a new conversation)")
            continue
        if not text:
            continue
        message = {"role": "user", "content": text}
        ids = conversation_ids(tokenizer, messages + [message], config.chat_template)
        problem = overflow(tokenizer, config, message, ids, gen.max_len)
        if problem:
            record["overflows"] += 1
            say(problem)
            continue
        # What the cache holds is reused where the new conversation starts with it.
        kept = len(fed) if fed and gen.length == len(fed) and ids[: len(fed)] == fed and len(ids) > len(fed) else 0
        if fed and not kept:
            record["refeeds"] += 1
        start = time.perf_counter()
        try:
            tokens, first_token_s = reply(gen, tokenizer, ids, kept, config, stop, stdout)
        except KeyboardInterrupt:  # Ctrl-C stops the reply; the cache was left mid-step, so it starts anew
            gen.reset()
            fed = []
            say("\n(interrupted: this message is dropped)")
            continue
        text_of_reply = decode(tokenizer, [t for t in tokens if t not in stop])
        messages += [message, {"role": "assistant", "content": text_of_reply}]
        # The cache holds the conversation and the reply as far as it was fed: all but the
        # last new token, or all of them where a step ran on past the EOS.
        fed = (ids + tokens)[: gen.length] if gen.length <= len(ids) + len(tokens) else []
        record["turns"].append({
            "user": text, "reply": text_of_reply, "generated_token_ids": tokens,
            "prompt_tokens": len(ids), "cached_tokens": kept, "prefilled_tokens": len(ids) - kept,
            "first_token_s": first_token_s, "seconds": time.perf_counter() - start,
        })
