"""The tokenizer and the Llama-3 chat format: text to token ids, for data.py, sft.py and evaluate.py.

`load_tokenizer` gives one `Tokenizer` interface over the Llama-3 tiktoken file (llama-models' tokenizer.model, a
checkpoint's copy, or a hub repo's original/tokenizer.model) and over a Hugging Face tokenizer.json. `encode` never
turns text into special ids: a user who types "<|eot_id|>" gets the ids of that text, so special tokens enter a
sequence only where code puts them (sources.tokenize's BOS/EOS around documents, `chat_ids` below).

Tokenising very long text: tiktoken's BPE is quadratic on huge pre-tokenizer pieces and runs out of memory on huge
inputs, so text is cut into pieces of about 64K characters, only at points where Llama-3's split regex always
starts a new piece ("\\n" followed by non-space, non-space followed by " " or "\\t", an ASCII letter or digit followed
by "\\n"): encoding the pieces separately gives the same ids as encoding the whole. On top of that we apply
llama_models' own rule (runs of more than 25,000 whitespace or non-whitespace characters are cut every 25,000), so ids
equal llama_models' Tokenizer for any text under its 400,000-character window; for longer texts we do not add its
arbitrary 400,000-character cuts. Only if 4M characters pass with no safe point at all is the text cut anyway.

The Llama-3 chat format (`chat_ids`, the one place that spells it): <|begin_of_text|>, then per message
<|start_header_id|>{role}<|end_header_id|> "\\n\\n" {content}<|eot_id|>, exactly as llama_models' ChatFormat builds
it: the role, the "\\n\\n" and the content are encoded separately (so the newlines never merge with the content's
first token), and content is used as given (not stripped). The mask that comes with the ids is 1 exactly on an
assistant message's content and its <|eot_id|>: what the model is trained to produce (the header it is given).

Qwen2.5 and Qwen3 (one tokenizer: 151,643 byte-level BPE ranks, special tokens from 151,643, no BOS): tiktoken reads
the ranks from `qwen.tiktoken` (the dashscope==2.0.2 wheel ships it; its ranks and split pattern are those of
Qwen's tokenizer.json, checked in tests/test_qwen_tokenizer.py) with NFC normalisation as tokenizer.json's
normalizer does; a checkpoint's own tokenizer.json goes through the Hugging Face path. Their chat format is ChatML
(`chat_ids`): per message <|im_start|>{role}"\n"{content}<|im_end|>"\n", tokenised as transformers tokenises the
rendered template (the text between two special tokens is one string, so "\n" may merge with the content's first
token); the mask is 1 on an assistant message's content (every token touching it) and its <|im_end|>. Qwen2.5's
template starts a conversation without a system message with its default one; so does `chat_ids` when the
checkpoint's tokenizer_config.json template says so. Qwen3's thinking blocks are left out (SFT data has none).
"""
import importlib.util, json, os, re

from common import atomic_write, log, sha256_file
from tokenfiles import DataError

LLAMA3_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIAL))]
PIECE_CHARS, MAX_CARRY, RUN_LIMIT = 1 << 16, 1 << 22, 25_000
# Qwen2/2.5/3: dashscope 2.0.2's qwen.tiktoken; the split regex of Qwen's tokenizer.json (single digits, unlike
# Llama-3's \p{N}{1,3}); its added tokens from id 151,643 in order (Qwen3's list; Qwen2.5's is its first 22).
QWEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_RANKS = 151_643
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN2_5_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # its template's default

_SAFE = re.compile(r"[\r\n](?=\S)|\S(?=[ \t])|[A-Za-z0-9](?=[\r\n])")  # a cut after the consumed character
_LONG_RUN = re.compile(r"(?<!\S)\S{%d}|(?<!\s)\s{%d}" % (RUN_LIMIT + 1, RUN_LIMIT + 1))  # anchored: linear time
_RUN = {False: re.compile(r"\S*"), True: re.compile(r"\s*")}


def _split(buf, final, target):
    """Cut buf into independently encodable pieces; without `final`, also return the undetermined tail to carry."""
    cuts, half = [], RUN_LIMIT // 2
    # A run longer than RUN_LIMIT covers two consecutive multiples of RUN_LIMIT/2 and all between: check those
    # spans with early-exit string methods, and only then pay for the slow regex scan.
    spans = (buf[k:k + half + 1] for k in range(0, len(buf) - half, half))
    if any(span.isspace() or len(span.split(None, 1)) == 1 and not span[0].isspace() and not span[-1].isspace()
           for span in spans):
        for m in _LONG_RUN.finditer(buf):  # llama_models' rule; buf starts where its run counter restarts
            end = _RUN[buf[m.start()].isspace()].match(buf, m.start()).end()
            cuts.extend(range(m.start() + RUN_LIMIT, end, RUN_LIMIT))
    pieces, bounds = [], [0] + cuts + [len(buf)]
    for a, b in zip(bounds, bounds[1:]):
        pos = a
        while b - pos > target and (m := _SAFE.search(buf, pos + target - 1, b)):
            pieces.append(buf[pos:m.end()])
            pos = m.end()
        if b == len(buf) and not final:
            if b - pos > MAX_CARRY:  # no safe point in 4M characters: the one place ids may differ from whole text
                pieces.append(buf[pos:b])
                pos = b
            return pieces, buf[pos:]
        pieces.append(buf[pos:b])
    return [p for p in pieces if p], ""


def text_pieces(blocks, target=PIECE_CHARS):
    """Yield pieces of the text formed by concatenating `blocks` (strings), in bounded memory; see the top note."""
    pending, size = [], 0
    for block in blocks:
        pending.append(block)
        size += len(block)
        if size >= 2 * target:
            pieces, carry = _split("".join(pending), False, target)
            yield from pieces
            pending, size = [carry], len(carry)
    yield from _split("".join(pending), True, target)[0]


class Tokenizer:
    """Llama-3 (tiktoken) or, when `tokenizers` is installed, a Hugging Face tokenizer.json; one interface."""

    def __init__(self, name, files, special_tokens, encode_many, decode, n_vocab, bos, eos, eot, splits_safely):
        self.name, self.files, self.special_tokens, self.n_vocab = name, files, special_tokens, n_vocab
        self.sha256 = sha256_file(files[0])
        self._encode_many, self._decode, self.splits_safely = encode_many, decode, splits_safely
        self.bos_id, self.eos_id, self.eot_id = special_tokens[bos], special_tokens[eos], special_tokens[eot]
        self.add_bos = True  # whether the tokenizer's own default encoding starts with BOS (HELMET follows it)
        # what lm-eval's HF adapter conditions a text without context on (its prefix_token_id: the HF tokenizer's
        # bos_token, else its eos_token); Qwen's tiktoken file has no config: <|endoftext|>, a base model's eos
        self.prefix_id = self.bos_id
        # "chatml" (Qwen) or "llama3": which chat format chat_ids writes; and the system message a conversation
        # without one gets (Qwen2.5's template has one)
        self.chat_format = "chatml" if "<|im_start|>" in special_tokens else "llama3"
        self.default_system = None

    def pieces(self, blocks):
        return text_pieces(blocks) if self.splits_safely else ["".join(blocks)]

    def encode(self, text):
        """Ids of ordinary text: special-token strings in `text` are encoded as plain text, never as special ids."""
        return [t for ids in self._encode_many(list(self.pieces([text])), 1) for t in ids]

    def encode_batch(self, texts, num_threads=os.cpu_count()):
        pieces = [list(self.pieces([t])) for t in texts]
        flat = iter(self._encode_many([p for ps in pieces for p in ps], num_threads))
        return [[t for _ in ps for t in next(flat)] for ps in pieces]

    def decode(self, ids):
        return self._decode([int(i) for i in ids])

    def save(self, directory):
        """Copy the tokenizer file(s) into a checkpoint directory, so that load_tokenizer(directory) reads them."""
        os.makedirs(directory, exist_ok=True)
        for f in self.files:
            with open(f, "rb") as src:
                atomic_write(os.path.join(directory, os.path.basename(f)), src.read())


def _tiktoken_tokenizer(path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    try:
        ranks = load_tiktoken_bpe(path)
    except Exception as e:
        raise DataError(f"{path}: not a tiktoken BPE file (base64 token, rank per line): {e}") from None
    if len(ranks) == QWEN_RANKS:
        return _qwen_tiktoken(path, ranks)
    special = {tok: len(ranks) + i for i, tok in enumerate(LLAMA3_SPECIAL)}
    enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens=special)
    tok = Tokenizer("tiktoken:" + os.path.abspath(path), [path], special,
                    lambda texts, threads: enc.encode_ordinary_batch(texts, num_threads=threads) if threads > 1
                    else [enc.encode_ordinary(t) for t in texts], enc.decode, enc.n_vocab,
                    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", splits_safely=True)
    if tok.sha256 == LLAMA3_SHA256:
        tok.name = "llama3"
    elif len(ranks) != 128_000:
        log(f"warning: {path} has {len(ranks)} BPE ranks, not Llama-3's 128,000; special ids start at {len(ranks)}")
    return tok


def _qwen_tiktoken(path, ranks):
    import unicodedata
    import tiktoken
    special = {tok: QWEN_RANKS + i for i, tok in enumerate(QWEN_SPECIAL)}
    enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                            special_tokens=special)

    def encode_many(texts, threads):  # NFC per piece: the safe cut points never fall before a combining mark
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        return enc.encode_ordinary_batch(texts, num_threads=threads) if threads > 1 else \
            [enc.encode_ordinary(t) for t in texts]

    # no BOS: bos_id is <|endoftext|> only for code that needs an id; add_bos says none is written
    tok = Tokenizer("tiktoken:" + os.path.abspath(path), [path], special, encode_many, enc.decode, enc.n_vocab,
                    "<|endoftext|>", "<|endoftext|>", "<|im_end|>", splits_safely=True)
    tok.add_bos = False
    if tok.sha256 == QWEN_SHA256:
        tok.name = "qwen"
    return tok


def _hf_tokenizer(directory):
    try:
        from tokenizers import Tokenizer as HFTok
    except ImportError:
        raise DataError(f"{directory} has only tokenizer.json: `pip install tokenizers` to read it") from None
    path, cfg_path = os.path.join(directory, "tokenizer.json"), os.path.join(directory, "tokenizer_config.json")
    try:
        hf = HFTok.from_file(path)
        cfg = json.load(open(cfg_path, "rb")) if os.path.exists(cfg_path) else {}
    except Exception as e:  # tokenizers raises a bare Exception for a corrupt file
        raise DataError(f"{directory}: unreadable tokenizer.json or tokenizer_config.json ({e})") from None
    hf.encode_special_tokens = True  # user text that spells a special token stays plain text
    special = {t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    content = lambda t: t.get("content") if isinstance(t, dict) else t  # configs spell tokens both ways

    def pick(key, *fallbacks):  # the config's token for `key`, else the first fallback this vocabulary has
        return next((t for t in [content(cfg.get(key)), *fallbacks] if t in special), None)

    # Qwen's Instruct configs name <|im_end|> as eos_token; a document still ends with <|endoftext|>
    eos = "<|endoftext|>" if "<|im_start|>" in special and "<|endoftext|>" in special else \
        pick("eos_token", "<|endoftext|>", "</s>")
    if eos is None:
        raise DataError(f"{path}: cannot tell the end-of-text token (no eos_token in tokenizer_config.json)")
    files = [path] + ([cfg_path] if os.path.exists(cfg_path) else [])
    tok = Tokenizer("hf:" + os.path.abspath(directory), files, special,
                     lambda texts, threads: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
                     lambda ids: hf.decode(ids, skip_special_tokens=False), hf.get_vocab_size(),
                     pick("bos_token", "<|begin_of_text|>", "<s>") or eos, eos,
                     pick("eot_token", "<|eot_id|>", "<|im_end|>") or eos, splits_safely=False)
    tok.add_bos = hf.encode("a", add_special_tokens=True).ids[:1] == [tok.bos_id]  # its post-processor's choice
    named = [special.get(content(cfg.get(k))) for k in ("bos_token", "eos_token")]  # Qwen Instruct: None, <|im_end|>
    tok.prefix_id = next((i for i in named if i is not None), tok.bos_id)
    if QWEN2_5_SYSTEM in str(cfg.get("chat_template")) and tok.chat_format == "chatml":
        tok.default_system = QWEN2_5_SYSTEM
    return tok


def load_tokenizer(spec=None):
    """None: llama-models' Llama-3 file; a tokenizer.model path; a directory (checkpoint or HF snapshot); a hub id."""
    if isinstance(spec, Tokenizer):
        return spec
    if spec == "qwen":  # the Qwen2.5/Qwen3 BPE ranks that the dashscope wheel ships
        found = importlib.util.find_spec("dashscope")
        if found is None:
            raise DataError("tokenizer 'qwen' needs the dashscope package: `pip install --no-deps dashscope==2.0.2` "
                            "(it ships qwen.tiktoken); or pass a Qwen checkpoint directory or hub id")
        return _tiktoken_tokenizer(os.path.join(found.submodule_search_locations[0], "resources", "qwen.tiktoken"))
    if spec is None:
        found = importlib.util.find_spec("llama_models")
        if found is None:
            raise DataError("no tokenizer given and llama-models is not installed: "
                            "`pip install --no-deps llama-models==0.3.0` (it ships the Llama-3 tokenizer.model)")
        path = os.path.join(found.submodule_search_locations[0], "llama3", "tokenizer.model")
        tok = _tiktoken_tokenizer(path)
        if tok.sha256 != LLAMA3_SHA256:
            raise DataError(f"{path}: sha256 {tok.sha256} is not the Llama-3 tokenizer's {LLAMA3_SHA256}")
        return tok
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return _tiktoken_tokenizer(spec)
    if os.path.isdir(spec):
        for rel in ("tokenizer.model", "original/tokenizer.model", "qwen.tiktoken"):
            if os.path.isfile(os.path.join(spec, rel)):
                return _tiktoken_tokenizer(os.path.join(spec, rel))
        if os.path.isfile(os.path.join(spec, "tokenizer.json")):
            return _hf_tokenizer(spec)
        raise DataError(f"{spec}: no tokenizer.model, original/tokenizer.model or tokenizer.json in this directory")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import hf_hub_download
        try:
            return _tiktoken_tokenizer(hf_hub_download(spec, "original/tokenizer.model"))
        except Exception as e:
            first = e
        try:  # a Qwen repo (or any other) has only tokenizer.json
            from huggingface_hub import snapshot_download
            return _hf_tokenizer(snapshot_download(spec, allow_patterns=["tokenizer.json", "tokenizer_config.json"]))
        except Exception:
            raise DataError(f"{spec}: could not fetch original/tokenizer.model or tokenizer.json from the hub: "
                            f"{first}") from None
    raise DataError(f"{spec}: no such tokenizer file, directory or hub repo id")


# --------------------------------------------------------------------------------------------------- chat format

CHAT_ROLES = ("system", "user", "assistant")
# JSON's "\ud800" escape without its pair gives a str that no UTF-8 encodes: tiktoken would write U+FFFD instead,
# so data.py tokenize and the chat format refuse such text rather than train on a replacement character.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_chat(messages, need_assistant=True):
    """Raise DataError (one line, no file name: the caller prefixes file:line) unless `messages` is a well-formed
    conversation: a list of {"role", "content"} dicts, roles from CHAT_ROLES, a system message only first, non-empty
    string content, and (for training) at least one assistant message."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"messages must be a non-empty list of {{role, content}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i}: not a {{role, content}} dict: {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in CHAT_ROLES:
            raise DataError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if role == "system" and i:
            raise DataError(f"message {i}: a system message may only come first")
        if not isinstance(content, str):
            raise DataError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise DataError(f"message {i} ({role}): empty content")
        if LONE_SURROGATE.search(content):
            raise DataError(f"message {i} ({role}): invalid Unicode (an unpaired surrogate escape such as \\ud800) "
                            f"in the content")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError("no assistant message: nothing to train on")


def chat_ids(tokenizer, messages, add_bos=True, add_generation_prompt=False):
    """Token ids and 0/1 mask (1 = an assistant message's content and its <|eot_id|>) of a conversation in the
    Llama-3 chat format (see the top note), or ChatML for a Qwen tokenizer; with add_generation_prompt, end with an
    open assistant header (a prompt for generation, which then needs no assistant message)."""
    check_chat(messages, need_assistant=not add_generation_prompt)
    if getattr(tokenizer, "chat_format", "llama3") == "chatml":
        return _chatml_ids(tokenizer, messages, add_generation_prompt)
    special = tokenizer.special_tokens
    if "<|start_header_id|>" not in special or "<|end_header_id|>" not in special:
        raise DataError(f"tokenizer {tokenizer.name} has no Llama-3 chat tokens (<|start_header_id|>, "
                        f"<|end_header_id|>)")
    newlines = tokenizer.encode("\n\n")

    def header(role):
        return [special["<|start_header_id|>"], *tokenizer.encode(role), special["<|end_header_id|>"], *newlines]

    ids = [tokenizer.bos_id] if add_bos else []
    mask = [0] * len(ids)
    for m in messages:
        head, body = header(m["role"]), tokenizer.encode(m["content"]) + [tokenizer.eot_id]
        ids += head + body
        mask += [0] * len(head) + [int(m["role"] == "assistant")] * len(body)
    if add_generation_prompt:
        head = header("assistant")
        ids, mask = ids + head, mask + [0] * len(head)
    return ids, mask


def _chatml_ids(tokenizer, messages, add_generation_prompt):
    """ChatML as Qwen's template renders it and transformers tokenises it (see the top note); no BOS."""
    start, end = tokenizer.special_tokens["<|im_start|>"], tokenizer.special_tokens["<|im_end|>"]
    if tokenizer.default_system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": tokenizer.default_system}] + messages
    newline, ids, mask = tokenizer.encode("\n"), [], []
    for m in messages:
        head, body = tokenizer.encode(m["role"] + "\n"), tokenizer.encode(m["role"] + "\n" + m["content"])
        shared = next((i for i, (a, b) in enumerate(zip(head, body)) if a != b), min(len(head), len(body)))
        trained = int(m["role"] == "assistant")  # from the first token that touches the content, and <|im_end|>
        ids += [start, *body, end, *newline]
        mask += [0] * (1 + shared) + [trained] * (len(body) - shared + 1) + [0] * len(newline)
    if add_generation_prompt:
        head = [start, *tokenizer.encode("assistant\n")]
        ids, mask = ids + head, mask + [0] * len(head)
    return ids, mask
