"""Incremental detokenization: the text of generated tokens as they arrive, for streaming to a
terminal or a server's event stream.

Decoding each token alone is wrong twice over: a byte-level BPE token can hold part of a UTF-8
character (alone it decodes to U+FFFD), and a SentencePiece decoder drops the leading space of
the first token it sees ("▁Paris" alone is "Paris"). So each step decodes a short window of
tokens twice, with and without the newest ones, and emits only what the newer decode adds:

    ids:  ... | prefix ... read | newest ...
                 already emitted   not yet emitted

``decode(ids[prefix:])`` minus ``decode(ids[prefix:read])`` is the new text; the tokens before
``read`` give the context that keeps the newest one's space. Text ending in U+FFFD is an
incomplete character and waits for the tokens that complete it.

One case cannot be streamed exactly: where byte-fallback tokens (SentencePiece's <0xXX>) form
invalid UTF-8, tokenizers' ByteFallback decoder turns the whole run of byte tokens into U+FFFD,
valid bytes before the bad one included, which were shown already (as SentencePiece itself
would decode them).
"""

# Prompt tokens kept as context for the first generated ones (their leading space, and a
# character the prompt may have left open). A handful suffices; more only costs decode time.
CONTEXT = 6


def decode(tokenizer, ids):
    # As the full reply is decoded: special tokens dropped; no clean-up (it changes spaces
    # around punctuation, and BPE tokenizers ignore it anyway)
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class Detokenizer:
    """``push(token_id)`` returns the text that is final now (maybe ""); ``flush()`` the rest.

    Their concatenation equals ``decode(all pushed ids)``, except that with ``prompt_ids`` the
    first piece keeps the leading space the text has after the prompt, which a SentencePiece
    decode of the new ids alone drops (callers that show a reply strip its start anyway). Each
    push decodes only the tokens since the last emitted piece, so its cost does not grow with
    the length of the text.
    """

    def __init__(self, tokenizer, prompt_ids=()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)[-CONTEXT:]
        self.prefix, self.read = 0, len(self.ids)

    def _new_text(self):
        before = decode(self.tokenizer, self.ids[self.prefix : self.read])
        after = decode(self.tokenizer, self.ids[self.prefix :])
        return after[len(before) :]

    def push(self, token_id):
        self.ids.append(int(token_id))
        text = self._new_text()
        # Nothing yet (a special token), or a character still open: keep the window and wait.
        if not text or text.endswith("\ufffd"):
            return ""
        # The emitted tokens become the next window's context; older ones are no longer needed.
        del self.ids[: self.read]
        self.prefix, self.read = 0, len(self.ids)
        return text

    def flush(self):
        """What is left at the end (a character that never completed decodes as U+FFFD, as in
        the full decode)."""
        text = self._new_text()
        self.ids, self.prefix, self.read = [], 0, 0
        return text


def printer(tokenizer, prompt_ids, write, skip=()):
    """Show the first row's text as it is decoded: an ``on_step`` for ``generate`` and the
    function that ends the text with a newline. ``write`` takes each piece; the text's leading
    whitespace is not shown (an answer is shown stripped); ids in ``skip`` are not decoded."""
    text = Detokenizer(tokenizer, prompt_ids)
    started = False

    def show(piece):
        nonlocal started
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            write(piece)

    def on_step(tokens):
        if tokens[0] is not None and tokens[0] not in skip:
            show(text.push(tokens[0]))

    def end():
        show(text.flush())
        write("\n")

    return on_step, end
