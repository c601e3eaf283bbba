"""Minimal Export Center API client (standard library only)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional


class ExportCenterError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class ExportCenterClient:
    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None,
                 accept: str = "application/json"):
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise ExportCenterError(exc.code, exc.read().decode("utf-8", "replace")) from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._request(method, path, body) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def list_profiles(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/export-center/profiles")

    def create_run(self, profile_id: str, products: Optional[List[str]] = None,
                   sign: bool = True) -> Dict[str, Any]:
        body: Dict[str, Any] = {"profileId": profile_id, "sign": sign}
        if products:
            body["products"] = products
        return self._json("POST", "/export-center/runs", body)

    def get_run(self, run_id: str) -> Dict[str, Any]:
        return self._json("GET", f"/export-center/runs/{run_id}")

    def stream_events(self, run_id: str) -> Iterator[Dict[str, Any]]:
        """Yield RunEvent objects from the server-sent event stream."""
        path = f"/export-center/runs/{run_id}/events"
        with self._request("GET", path, accept="text/event-stream") as resp:
            data: List[str] = []
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    event = json.loads("\n".join(data))
                    data = []
                    yield event
                    if event.get("type") in ("run.succeeded", "run.failed", "run.cancelled"):
                        return
