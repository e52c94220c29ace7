"""A Kubernetes API for tests: kmock's stateful emulator served over real HTTP from a
background thread, for the official `kubernetes` client (the edge of the world; nothing of
ours is faked).

Known limits of kmock 0.8 (see /work/shared/NOTES.md): list calls ignore `label_selector`,
and nothing it stores is validated. (NOTES.md also says a clashing create answers 500: that is
only when the emulator is not entered as a context manager, as it is here.) Tests
inject real HTTP failures with its reactions: `emulator[method, path] << 409` answers every
matching request with that status (`[:n]` before `<<`: only the next n) (the emulator still records a create: that is what a
lost answer looks like to the client).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import kmock
from kubernetes import client as k8s


@dataclass
class KubeAPI:
    url: str
    emulator: kmock.KubernetesEmulator
    loop: asyncio.AbstractEventLoop

    def react(self, method: str, path: str, payload: object, *, times: int | None = None) -> None:
        """Program the emulator from the test's thread (its reactions live in the server's loop):
        every matching request gets `payload`, or only the next `times` ones."""
        async def add() -> None:
            view = self.emulator[method, path]
            if times is not None:
                # A slice counts every matching request the emulator has seen, earlier ones too.
                seen = len(list(view))
                view = view[seen:seen + times]
            view << payload

        asyncio.run_coroutine_threadsafe(add(), self.loop).result(5)

    def core(self) -> k8s.CoreV1Api:
        conf = k8s.Configuration()
        conf.host = self.url
        return k8s.CoreV1Api(k8s.ApiClient(conf))


@contextmanager
def kube_api() -> Iterator[KubeAPI]:
    ready = threading.Event()
    state: dict[str, object] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            emulator = kmock.KubernetesEmulator()
            # Known before any object exists, as in a real cluster: listing an empty
            # namespace answers an empty list, not "resource not declared" (404).
            emulator.resources["v1/pods"] = {"namespaced": True, "kind": "Pod"}
            emulator.resources["v1/secrets"] = {"namespaced": True, "kind": "Secret"}
            stop = asyncio.Event()
            # Entered as a context manager, the emulator renders its errors as the API server's
            # Status objects (404, 409) instead of a bare 500, and serves streams/reactions.
            async with emulator, kmock.Server(emulator) as server:
                state.update(api=KubeAPI(str(server.url).rstrip("/"), emulator, loop), stop=stop)
                ready.set()
                await stop.wait()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting test below
            state["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="kmock", daemon=True)
    thread.start()
    assert ready.wait(15), "the Kubernetes emulator did not start"
    if "error" in state:
        raise RuntimeError(f"the Kubernetes emulator did not start: {state['error']!r}")
    api: KubeAPI = state["api"]  # type: ignore[assignment]
    try:
        yield api
    finally:
        api.loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(10)
