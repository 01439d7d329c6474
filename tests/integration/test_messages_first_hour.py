"""What a newcomer's first mistakes get told, by a real server on loopback: a key sent without its
`Bearer` scheme, and an empty file."""

from __future__ import annotations

import base64

import httpx

from tests.helpers import DOOR_KEY, Server


def test_a_key_without_bearer_is_told_the_scheme(keyed_server: Server) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30) as c:
        bare = c.get("/models", headers={"Authorization": DOOR_KEY})
        none = c.get("/models")
        wrong = c.get("/models", headers={"Authorization": "Bearer nope"})
        right = c.get("/models", headers={"Authorization": f"Bearer {DOOR_KEY}"})
    assert bare.status_code == 401
    assert bare.json()["detail"] == (
        "the Authorization header lacks the `Bearer` scheme: "
        "send it as the header `Authorization: Bearer <key>`"
    )
    assert none.status_code == 401 and none.json()["detail"].startswith("missing API key: ")
    assert wrong.status_code == 401 and wrong.json()["detail"].startswith("wrong API key: ")
    assert right.status_code == 200


def test_an_empty_file_is_called_empty(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        multipart = c.post("/embed", files={"images": ("empty.jpg", b"", "image/jpeg")})
        as_json = c.post(
            "/embed", json={"images": [base64.b64encode(b"").decode() or "data:image/png;base64,"]}
        )
    assert multipart.status_code == 400, multipart.text
    assert "the file is empty (0 bytes)" in multipart.json()["detail"], multipart.text
    assert "not an image" not in multipart.json()["detail"]
    assert as_json.status_code in (400, 422), as_json.text
    assert "empty" in as_json.json()["detail"], as_json.text
