"""Decisions from an Open Policy Agent server, through its Data API."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import httpx
import orjson

from spawnpoint.policy.engine import DEFAULT_POLICY_TIMEOUT, Decision, PolicyUnavailable

DATA_API_PREFIX: Final = "/v1/data/"
JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


class OpaPolicyEngine:
    """Asks OPA for the allow document (OPA_POLICY_PATH) and its sibling `deny` document.

    Both are fetched concurrently with the same input, so a decision costs one round trip and
    `allow` is only granted when `deny` is empty too, exactly as in the embedded engine (a
    custom OPA policy may define `allow` without looking at `deny`). `timeout` bounds the whole
    decision, both requests included.
    """

    def __init__(
        self,
        url: str,
        policy_path: str = "/v1/data/spawn/allow",
        *,
        timeout: float = DEFAULT_POLICY_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Prepare one shared HTTP client; nothing is sent until `evaluate`.

        Args:
            url: OPA's base URL, e.g. `http://opa:8181`.
            policy_path: the allow document, `/v1/data/<package path>/<rule>`.
            timeout: seconds for the whole decision.
            transport: an httpx transport (tests); default: a connection pool.

        Raises:
            ValueError: `policy_path` is not a Data API document path.
        """
        path = "/" + policy_path.strip("/")
        if not path.startswith(DATA_API_PREFIX) or path == DATA_API_PREFIX.rstrip("/"):
            raise ValueError(f"OPA_POLICY_PATH {policy_path!r} is not under {DATA_API_PREFIX}")
        if timeout <= 0:
            raise ValueError("the OPA timeout must be positive")
        self.allow_url = url.rstrip("/") + path
        self.deny_url = self.allow_url.rsplit("/", 1)[0] + "/deny"
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            headers=JSON_HEADERS,
            transport=transport,
            follow_redirects=False,
        )

    async def evaluate(self, policy_input: dict[str, Any]) -> Decision:
        """Decide one spawn (see `PolicyEngine.evaluate`)."""
        if self._client.is_closed:
            raise PolicyUnavailable("the policy engine is closed")
        body = orjson.dumps({"input": policy_input})
        tasks = [
            asyncio.ensure_future(self._document(self.allow_url, body)),
            asyncio.ensure_future(self._document(self.deny_url, body)),
        ]
        try:
            async with asyncio.timeout(self.timeout):
                allow, deny = await asyncio.gather(*tasks)
        except TimeoutError:
            raise PolicyUnavailable(f"OPA did not answer within {self.timeout:g} s") from None
        finally:
            # One request failed or timed out: stop the other and collect its outcome.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return Decision.from_documents(allow, deny)

    async def _document(self, url: str, body: bytes) -> object:
        """The `result` of POST `url` (None when OPA says the document is undefined)."""
        try:
            response = await self._client.post(url, content=body)
        except httpx.TimeoutException:
            raise PolicyUnavailable(f"OPA did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"OPA is unreachable at {url}: {exc!r}") from None
        if response.status_code != httpx.codes.OK:
            raise PolicyUnavailable(
                f"OPA answered {response.status_code} for {url}: {response.text[:200]}"
            )
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise PolicyUnavailable(f"OPA answered {url} with malformed JSON") from None
        if not isinstance(answer, dict):
            raise PolicyUnavailable(f"OPA answered {url} with {type(answer).__name__}")
        return answer.get("result")

    async def aclose(self) -> None:
        await self._client.aclose()
