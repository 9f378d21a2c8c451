"""
HELMET's GPT-4o judge for free-form answers (LongQA and Summ), with any OpenAI-compatible endpoint and no
dependency beyond the standard library (the `openai` client is used when it is installed). ROUGE is in
tasks/rouge.py; HELMET's prompt texts, verbatim, in tasks/judge_prompts.txt (read on first use).

- `Judge(url, model)`: one chat-completions call per prompt to any OpenAI-compatible endpoint (OpenAI, vLLM, a
  llama.cpp server...), with a few short retries, a one-line `JudgeError`, and a JSONL cache so a rerun pays nothing.
- `judge_longqa` / `judge_summ`: HELMET's judges (scripts/eval_gpt4_longqa.py, scripts/eval_gpt4_summ.py at commit
  4526dfb): its prompt texts character for character, its request (temperature 0.1, top_p 0.9, seed 42, max_tokens
  2048 for LongQA and 4096 for Summ, one user message, no system message), its JSON parsing and its arithmetic.
  NarrativeQA: fluency (0/1) x correctness (0-3). Summ (Multi-LexSum, InfBench sum_eng "book" prompts): recall =
  key points found / key points, precision = supported sentences / sentences, gpt-4-f1 = fluency x their F1.

Where scores can differ from HELMET's published ones:
- The judge model. HELMET used gpt-4o-2024-05-13; any other model (a newer GPT-4o, a local open model) is a different
  judge and gives different scores: numbers are comparable only between runs judged by the same model.
- Sampling. HELMET samples the judge at temperature 0.1, so even the same model can answer differently between runs
  (HELMET also went through OpenAI's batch API). The cache makes our reruns repeat the first answer.
- Errors. HELMET retried rate limits without end (10 s apart) and other errors 5 times, then left the sample out;
  here a call that still fails after `retries` raises JudgeError, so nothing is silently dropped.

HELMET behaviour that is odd and kept on purpose (it changes scores):
- A judge answer that cannot be parsed leaves the sample OUT of the average (HELMET's LongQA divides by the number
  parsed, its Summ averages only samples with scores); it does not count as 0. Here such a sample gets None scores;
  `judged_mean` averages the way HELMET does.
- parse_json takes the LAST non-greedy `{...}` of the answer, so a nested object never parses and a stray `{x}` after
  the JSON wins. Only Summ's parse falls back to a ```json block (greedy: from the first ```json to the last ```);
  LongQA's has no fallback.
- LongQA judges `parse_output(output)`: newlines become spaces and the text after the first "Answer:" (any case) is
  kept. The correct answers go into the prompt as Python's `str()` of the list, brackets and quotes included.
- Summ: recall and precision are not capped at 1 (the judge's count can exceed the total); the summary is
  `output.strip()`; the fluency prompt wraps it in unescaped quotes; the precision reference is Multi-LexSum's
  `summary/long` and InfBench's `answer[0]` (a list given as `reference` is read as InfBench's `answer`).
- HELMET reports gpt-4-score on its 0-3 scale and scripts/collect_results.py multiplies it by 100/3 (gpt-4-f1 by
  100): `judged_mean` returns those final numbers.
Where HELMET would crash (a parsed JSON without the expected keys: KeyError; a non-numeric score: TypeError) the
sample counts as unparsed here. HELMET's per-sample "f1" is fluency x F1, called "gpt-4-f1" here; "f1" here is the
plain F1 of recall and precision.
"""

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

from common import UserError

# ------------------------------------------------------------------------------------------------------------
# the judge: one OpenAI-compatible chat-completions call per prompt, cached

class JudgeError(UserError):
    """The judge endpoint failed for good (after retries, or a 4xx that retrying cannot fix): one line."""


def _caught(post, body):
    """post(body), or the exception it raised (handed to the waiting thread)."""
    try:
        return post(body)
    except BaseException as e:
        return e


def _one_line(text, limit=200):
    return " ".join(str(text).split())[:limit]


class Judge:
    """`ask(prompt) -> str` against `{url}/chat/completions` (url as the openai client's base_url, e.g.
    https://api.openai.com/v1 or http://localhost:8000/v1). The key is `api_key` or $`key_env`; a local server needs
    none (then urllib sends no Authorization header and the openai client a dummy key). Connection errors, 429 and
    5xx are retried `retries` times, `backoff` x 1, 2, 4... seconds apart; then JudgeError. Answers are cached in
    `cache_path` (JSONL, one line per answer, appended and flushed) keyed by sha256 of (model, temperature,
    prompt); the path may be set or changed after construction. Safe to share between threads (e.g. a
    ThreadPoolExecutor over samples)."""

    def __init__(self, url, model, api_key=None, cache_path=None, temperature=0.1, max_tokens=4096,
                 key_env="OPENAI_API_KEY", retries=3, backoff=2.0, timeout=120.0, deadline=None):
        self.url, self.model, self.cache_path = url.rstrip("/"), model, cache_path
        self.temperature, self.max_tokens = temperature, max_tokens
        self.api_key = api_key if api_key is not None else os.environ.get(key_env)
        # `timeout`: the seconds one request may take in all (a trickling answer too); `deadline`: the seconds all
        # the attempts for one prompt may take (default 3 x timeout), so that no endpoint can hang a run
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.deadline = 3 * timeout if deadline is None else deadline
        self.requests = 0  # HTTP calls made (cache misses and retries), to report what a run cost
        self._cache, self._cache_read, self._lock = {}, None, threading.Lock()
        try:
            import openai
        except ImportError:
            openai = None  # plain urllib below sends the same JSON
        self._openai = openai
        self._client = openai and openai.OpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=0,
                                                timeout=timeout)

    def _key(self, prompt):
        return hashlib.sha256(json.dumps([self.model, self.temperature, prompt]).encode()).hexdigest()

    def _read_cache(self):  # under the lock; again whenever cache_path has changed
        if self.cache_path == self._cache_read:
            return
        self._cache_read = self.cache_path
        if not self.cache_path or not os.path.exists(self.cache_path):
            return
        with open(self.cache_path, "rb") as f:
            data = f.read()
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                self._cache[row["key"]] = row["answer"]
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a crash: that answer is asked again
        if data and not data.endswith(b"\n"):
            with open(self.cache_path, "a", encoding="utf-8") as f:
                f.write("\n")  # so the next answer does not land on the cut line

    def ask(self, prompt, max_tokens=None):
        """The judge's answer to one user message; None when the endpoint returned no content (filtered), which
        HELMET also treats as an unjudged sample (not cached, so a rerun asks again)."""
        key = self._key(prompt)
        with self._lock:
            self._read_cache()
            if key in self._cache:
                return self._cache[key]
        answer = self._request(prompt, max_tokens or self.max_tokens)
        if answer is not None and not isinstance(answer, str):  # never cached: a rerun would fail on it again
            raise JudgeError(f"judge at {self.url} (model {self.model}): the answer's content is "
                             f"{_one_line(json.dumps(answer), 60)}, not text: not a chat-completions answer")
        if answer is not None:
            with self._lock:
                self._cache[key] = answer
                if self.cache_path:
                    with open(self.cache_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"key": key, "model": self.model, "temperature": self.temperature,
                                            "answer": answer}) + "\n")
                        f.flush()
        return answer

    def _request(self, prompt, max_tokens):
        # HELMET's OpenAIModel.generate: one user message, temperature, top_p 0.9, seed 42, max_tokens
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": self.temperature, "top_p": 0.9, "seed": 42}
        end = time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            self.requests += 1
            status, result = self._within(min(self.timeout, end - time.monotonic()), body)
            if status == 200:
                return result
            if status is not None and status != 429 and status < 500:
                break  # a bad request, key or model name: retrying cannot help
            if attempt == self.retries or time.monotonic() + self.backoff * 2 ** attempt >= end:
                break
            time.sleep(self.backoff * 2 ** attempt)
        what = f"HTTP {status}: {result}" if status is not None else result if result.startswith("no complete") \
            else f"cannot connect ({result})"
        raise JudgeError(_one_line(f"judge at {self.url} (model {self.model}): {what} after {attempt + 1} "
                                   f"attempt(s)", 400))

    def _within(self, seconds, body):
        """One request that may take `seconds` in all: sockets time out only when silent, so a server that trickles
        a byte now and then would keep one waiting; the request runs in a thread that is abandoned at the time."""
        done = []
        post = self._post_openai if self._client else self._post_urllib
        worker = threading.Thread(target=lambda: done.append(_caught(post, body)), daemon=True)
        worker.start()
        worker.join(max(seconds, 0))
        if not done:
            return None, f"no complete answer within {self.timeout:g} s (--judge-timeout)"
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    def _post_openai(self, body):
        """(200, content) or (status, message); status None when no HTTP answer came back."""
        try:
            response = self._client.chat.completions.create(**body)
        except self._openai.APIStatusError as e:
            return e.status_code, _one_line(e.message)
        except self._openai.APIConnectionError as e:
            return None, _one_line(e.__cause__ or e)
        except (self._openai.OpenAIError, ValueError) as e:  # a body the client cannot read
            raise JudgeError(f"judge at {self.url}: not a chat-completions response: {_one_line(e, 100)}") from None
        try:
            return 200, response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):  # a 200 that is not a chat completion (a web page...)
            raise JudgeError(f"judge at {self.url}: not a chat-completions response: "
                             f"{_one_line(response, 100)}") from None

    def _post_urllib(self, body):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            return e.code, _one_line(e.read().decode("utf-8", "replace") or e.reason)
        except (urllib.error.URLError, OSError) as e:  # refused, DNS, timeout, connection reset
            return None, _one_line(getattr(e, "reason", None) or e)
        try:
            return 200, json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"judge at {self.url}: not a chat-completions response: "
                             f"{_one_line(payload.decode('utf-8', 'replace'), 100)}") from None


# ------------------------------------------------------------------------------------------------------------
# HELMET's judge procedures

def parse_json(text, fenced_fallback=False):
    """HELMET's parse_json: json of the last non-greedy {...} in the text, else None. Summ's version (fenced_fallback)
    tries, when that block is not valid JSON, the greedy ```json ... ``` span instead (it may then be any JSON)."""
    blocks = re.findall(r"\{.*?\}", text, re.DOTALL)
    if not blocks:
        return None
    try:
        return json.loads(blocks[-1])
    except Exception:  # HELMET's bare except (a decode error, or a RecursionError on deep nesting)
        if not fenced_fallback:
            return None
    fenced = re.findall(r"(?:```json)(.+)(?:```)", text, re.DOTALL)
    try:
        return json.loads(fenced[-1])
    except Exception:
        return None


def _scores(parsed, *keys):
    """The numbers under `keys`, or None where HELMET would have failed (no JSON) or crashed (missing/non-numeric)."""
    if not isinstance(parsed, dict) or not all(isinstance(parsed.get(k), (int, float)) for k in keys):
        return None
    return [parsed[k] for k in keys]


def parse_answer(output):
    """HELMET's LongQA parse_output: newlines to spaces, then the text after the first "Answer:" (any case), with a
    repeated "Answer:" removed; the whole output when there is none."""
    text = output.replace("\n", " ")
    found = re.search("Answer:", text, flags=re.IGNORECASE)
    if found:
        text = re.sub("^Answer:", "", text[found.end():].strip(), flags=re.IGNORECASE)
    return text.strip()


_PROMPTS = None


def prompt_text(name):
    """HELMET's prompt `name` (LONGQA_PROMPT, FLUENCY_PROMPT, RECALL_PROMPT_BOOK, ...) from judge_prompts.txt, where
    each text follows its `=== NAME ===` line and ends with the newline before the next one."""
    global _PROMPTS
    if _PROMPTS is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge_prompts.txt"),
                  encoding="utf-8") as f:
            parts = re.split(r"^=== (\w+) ===\n", f.read(), flags=re.M)
        _PROMPTS = {parts[i]: parts[i + 1][:-1] for i in range(1, len(parts), 2)}
    return _PROMPTS[name]


def longqa_prompt(question, answers, output):
    return prompt_text("LONGQA_PROMPT").format(question=question, correct_answers=answers,
                                               parsed_output=parse_answer(output))


def judge_longqa(judge, question, answers, output):
    """NarrativeQA: {fluency (0/1), correctness (0-3), gpt-4-score = their product, judge_output}; the scores are
    None when the answer does not parse (HELMET then leaves the sample out of its average)."""
    text = judge.ask(longqa_prompt(question, answers, output), max_tokens=2048)
    got = _scores(parse_json(text), "fluency", "correctness") if text is not None else None
    if got is None:
        return {"fluency": None, "correctness": None, "gpt-4-score": None, "judge_output": text}
    return {"fluency": got[0], "correctness": got[1], "gpt-4-score": got[0] * got[1], "judge_output": text}


def summ_prompts(output, keypoints, reference, book=False):
    """HELMET's (fluency, recall, precision) prompts; book=True for InfBench sum_eng, else Multi-LexSum."""
    if not isinstance(reference, str):
        reference = reference[0]  # InfBench: HELMET's d["answer"][0]
    text = output.strip()
    points = "\n".join(f"{i + 1}. {kp}" for i, kp in enumerate(keypoints))
    fluency, recall, precision = (prompt_text(n + ("_BOOK" if book else ""))
                                  for n in ("FLUENCY_PROMPT", "RECALL_PROMPT", "PRECISION_PROMPT"))
    return (fluency.format(text=text), recall.format(keypoints=points, summary=text),
            precision.format(expert_summary=reference, summary=text))


def judge_summ(judge, output, keypoints, reference, book=False):
    """Key-point judge: {fluency, recall, precision, f1, gpt-4-f1, recall_found, recall_total, precision_found,
    precision_total, fluency_output, recall_output, precision_output}; scores None when any of the three answers is
    missing or does not parse (HELMET skips the sample). `reference` is the expert summary for precision: Multi-LexSum's
    summary/long, InfBench's answer (list: its first item)."""
    if not keypoints:  # HELMET would score recall 0, hence f1 0: nearly always key points that were never loaded
        raise UserError("judge_summ: no key points for this sample (HELMET's keypoint files: "
                        "data/multi_lexsum/multi_lexsum_val.jsonl, data/infbench/longbook_sum_eng_keypoints.jsonl)")
    texts = [judge.ask(p, max_tokens=4096) for p in summ_prompts(output, keypoints, reference, book)]
    result = {"fluency": None, "recall": None, "precision": None, "f1": None, "gpt-4-f1": None,
              "recall_found": None, "recall_total": len(keypoints), "precision_found": None, "precision_total": None,
              "fluency_output": texts[0], "recall_output": texts[1], "precision_output": texts[2]}
    if any(t is None for t in texts):
        return result
    f, r, p = (parse_json(t, fenced_fallback=True) for t in texts)
    f, r, p = _scores(f, "fluency"), _scores(r, "recall"), _scores(p, "precision", "sentence_count")
    if f is None or r is None or p is None:
        return result
    (fluency,), (found,), (supported, sentences) = f, r, p
    # HELMET's arithmetic, in its order of operations (so the floats match to the last bit)
    rec = found / len(keypoints) if len(keypoints) > 0 else 0
    prec = supported / sentences if sentences > 0 else 0
    result.update(fluency=fluency, recall=rec, precision=prec, recall_found=found, precision_found=supported,
                  precision_total=sentences, f1=2 * (rec * prec) / (rec + prec) if rec + prec > 0 else 0)
    result["gpt-4-f1"] = fluency * 2 * (rec * prec) / (rec + prec) if rec + prec > 0 else 0  # HELMET's "f1"
    return result


def judged_mean(values, metric):
    """HELMET's reported number for a judged metric from per-sample values: the mean over the samples that were
    judged (None left out, as HELMET does), scaled as scripts/collect_results.py (gpt-4-score x 100/3, gpt-4-f1 x 100).
    None when no sample was judged (HELMET stops with an error there)."""
    scored = [v for v in values if v is not None]
    if not scored:
        return None
    scale = {"gpt-4-score": 100 / 3, "gpt-4-f1": 100}.get(metric, 1)
    return sum(scored) / len(scored) * scale


