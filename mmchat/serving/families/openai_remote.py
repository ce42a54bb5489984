"""A model behind an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, `transformers serve`).

    adapter = OpenAIRemoteAdapter.from_source("openai:http://gpu-box:8000/v1#meta-llama/Llama-3.2-11B-Vision-Instruct")

The app becomes the front end: each question goes to `POST {base_url}/chat/completions` with the
image as a base64 data URL in the first user turn and the earlier turns as messages, and the
answer streams back as server-sent events. The server does the batching, the GPUs and the
scaling (tensor parallel, many replicas behind a load balancer: see docs/serving.md). It sends
text only, so there is no picture of where the model looked.

Configured from the environment: `MMCHAT_OPENAI_API_KEY` (or `OPENAI_API_KEY`), sent as a bearer
token when set, and `MMCHAT_OPENAI_TIMEOUT`, the seconds to wait for the server's next bytes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from .base import FamilyAdapter, ServingError, Turn

PREFIX = "openai:"
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
# Larger uploads are shrunk before sending: Llama 3.2 Vision reads at most 2 x 2 tiles of 560 px,
# and every turn sends the image again.
MAX_IMAGE_SIDE = 1120
BATCH_WORKERS = 8  # requests in flight at once for `answer_batch`; the server batches them
# Chats the app streams at once by default: the server batches them (continuous batching), so
# users need not wait in the app's queue for one another.
CONCURRENT_CHATS = 16


def parse_source(source: str) -> tuple[str, str]:
    """"openai:http://host:8000/v1#MODEL_ID" -> ("http://host:8000/v1", "MODEL_ID")."""
    url, _, model_id = source.removeprefix(PREFIX).partition("#")
    url = url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc or not model_id:
        raise ValueError(
            f"{source!r} is not a model server: write openai:http://HOST:PORT/v1#MODEL_ID, where MODEL_ID "
            "is the name the server gives the model (e.g. openai:http://127.0.0.1:8000/v1#meta-llama/Llama-3.2-11B-Vision-Instruct)."
        )
    return url, model_id


def image_data_url(image: Image.Image, max_side: int = MAX_IMAGE_SIDE) -> str:
    """The image as a PNG data URL (lossless), shrunk to `max_side` when larger."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(image: Image.Image, question: str, history: list[Turn]) -> list[dict[str, Any]]:
    """OpenAI chat messages: the image in the first user turn (as Llama 3.2 Vision's template wants it)."""
    questions = [t.question for t in history] + [question]
    messages: list[dict[str, Any]] = []
    for i, q in enumerate(questions):
        content: list[dict[str, Any]] = [{"type": "text", "text": q}]
        if i == 0:
            content.insert(0, {"type": "image_url", "image_url": {"url": image_data_url(image)}})
        messages.append({"role": "user", "content": content})
        if i < len(history):
            messages.append({"role": "assistant", "content": history[i].answer})
    return messages


def sampling(generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The engine's generate kwargs as chat-completions fields (temperature 0: greedy)."""
    fields: dict[str, Any] = {"max_tokens": generate_kwargs.get("max_new_tokens", 32)}
    if generate_kwargs.get("do_sample"):
        fields.update(temperature=generate_kwargs["temperature"], top_p=generate_kwargs.get("top_p", 1.0))
    else:
        fields["temperature"] = 0.0
    return fields


def _server_message(response: httpx.Response) -> str:
    """The error text of a response, whichever server wrote it (OpenAI/vLLM, TGI, FastAPI)."""
    try:
        body = json.loads(response.read())
    except (ValueError, httpx.HTTPError):
        return (response.text or response.reason_phrase or "").strip()[:300]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:300]
    return str(body)[:300]


class OpenAIRemoteAdapter(FamilyAdapter):
    """Asks a chat-completions server; no model or processor in this process."""

    family = "openai"
    model_types = ()  # chosen by the "openai:" source, not by a config's model_type
    multi_turn = True
    shows_attention = False
    remote = True
    streams_itself = True
    default_concurrency = CONCURRENT_CHATS

    def __init__(self, base_url: str, model_id: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(model=None, processor=None)
        self.base_url, self.model_id, self.timeout_s = base_url, model_id, timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
        )
        # What the app's model line shows: the server's name for the model, and where it runs.
        self.source, self.quantization, self.device_name = model_id, "remote", base_url

    @classmethod
    def from_source(cls, source: str, timeout_s: float | None = None) -> OpenAIRemoteAdapter:
        """An adapter for "openai:URL#MODEL_ID", with the API key and timeout from the environment."""
        base_url, model_id = parse_source(source)
        env = os.environ.get
        api_key = env("MMCHAT_OPENAI_API_KEY") or env("OPENAI_API_KEY") or None
        if timeout_s is None:
            try:
                timeout_s = float(env("MMCHAT_OPENAI_TIMEOUT") or DEFAULT_TIMEOUT_S)
            except ValueError:
                raise ValueError(f"MMCHAT_OPENAI_TIMEOUT must be a number of seconds, not {env('MMCHAT_OPENAI_TIMEOUT')!r}.") from None
        return cls(base_url, model_id, api_key, timeout_s)

    @property
    def tokenizer(self) -> Any:
        return None  # the server tokenizes

    @property
    def device(self) -> str:
        return self.base_url

    def _body(self, image: Image.Image, question: str, history: list[Turn], generate_kwargs: dict[str, Any], stream: bool) -> dict:
        return {"model": self.model_id, "messages": chat_messages(image, question, history), "stream": stream,
                **sampling(generate_kwargs)}

    def _explain(self, error: Exception) -> ServingError:
        """A transport error as a message for the user."""
        where = f"the model server at {self.base_url}"
        if isinstance(error, httpx.ConnectError):
            return ServingError(f"Cannot reach {where}: is it running? ({error})")
        if isinstance(error, httpx.TimeoutException):
            return ServingError(
                f"No answer from {where} within {self.timeout_s:g} s: it may be busy or still loading the model. "
                "Please try again in a moment."
            )
        return ServingError(f"The connection to {where} failed: {type(error).__name__}: {error}")

    def _refusal(self, response: httpx.Response) -> ServingError:
        """An HTTP error status as a message for the user."""
        detail = _server_message(response)
        code = response.status_code
        if code in (401, 403):
            return ServingError(
                f"The model server at {self.base_url} refused the request (HTTP {code}: {detail}). "
                "Set its API key in MMCHAT_OPENAI_API_KEY."
            )
        if code == 404 or self.model_id in detail:  # vLLM: 404 "The model `X` does not exist."
            return ServingError(
                f"The model server at {self.base_url} does not serve {self.model_id!r} (HTTP {code}: {detail}). "
                "Use the model id the server lists at /v1/models."
            )
        return ServingError(f"The model server at {self.base_url} returned an error (HTTP {code}): {detail}")

    def stream_answer(
        self,
        image: Image.Image,
        question: str,
        history: list[Turn],
        generate_kwargs: dict[str, Any],
        stop_event: threading.Event,
    ) -> Iterator[str]:
        """Yield the answer's pieces as the server sends them (server-sent events), until done or stopped.

        Closing this generator (Stop, a closed tab) closes the connection, which ends the request
        on servers that watch for it (vLLM, SGLang, TGI).
        """
        body = self._body(image, question, history, generate_kwargs, stream=True)
        try:
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise self._refusal(response)
                for line in response.iter_lines():
                    if stop_event.is_set():
                        return
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, "event:" lines
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ServingError(f"The model server at {self.base_url} sent what is not a chat-completions event: {data[:200]!r}") from None
                    if chunk.get("error"):  # an error after the stream began (vLLM sends these)
                        error = chunk["error"]
                        message = error.get("message", error) if isinstance(error, dict) else error
                        raise ServingError(f"The model server at {self.base_url} failed while answering: {message}")
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.HTTPError as e:
            raise self._explain(e) from e

    def _answer(self, image: Image.Image, question: str, generate_kwargs: dict[str, Any]) -> str:
        try:
            response = self.client.post("/chat/completions", json=self._body(image, question, [], generate_kwargs, stream=False))
        except httpx.HTTPError as e:
            raise self._explain(e) from e
        if response.status_code >= 400:
            raise self._refusal(response)
        choices = response.json().get("choices") or [{}]
        return ((choices[0].get("message") or {}).get("content") or "").strip()

    def answer_batch(self, images: list[Image.Image], questions: list[str], generate_kwargs: dict[str, Any]) -> list[str]:
        """Single-turn answers, several requests in flight at once: the server batches them."""
        with ThreadPoolExecutor(max_workers=BATCH_WORKERS) as pool:
            return list(pool.map(lambda iq: self._answer(iq[0], iq[1], generate_kwargs), zip(images, questions)))
