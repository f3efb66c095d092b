"""The chats API's routes and status codes, against ``convo serve`` as a real process on 127.0.0.1, with exact
requests as Coder's clients send them (the model is a fake Claude over HTTP)."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest
import requests
import websocket

from convo.server.auth import Permissions, create_token, verify_token
from tests.chats_support import API, Api, FakeModel, Frames, admin_token, token, ws_url
from tests.server_support import API_KEY, SECRET, ServeProcess

SIGNED_OUT = "You are signed out or your session has expired. Please sign in again to continue."
NOT_FOUND = {"message": "Resource not found or you do not have access to this resource"}
TEXT = {"content": [{"type": "text", "text": "hello"}]}


@pytest.fixture(scope="module")
def fake():
    with FakeModel() as server:
        yield server


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("chats-api"), fake.url, args=("--chat-heartbeat", "0.5")) as p:
        yield p


@pytest.fixture
def api(served):
    with Api(served.url, token(f"user-{uuid.uuid4().hex[:8]}")) as a:
        yield a


@pytest.fixture
def admin(served):
    with Api(served.url, admin_token()) as a:
        yield a


def busy_chat(api: Api) -> dict:
    """A chat whose run takes a while (40 words, one every 0.1 s)."""
    return api.create("DRIP 40 0.1")


class TestAuthentication:
    @pytest.mark.parametrize("method, path", [("GET", ""), ("POST", ""), ("GET", "/models"),
                                              ("GET", f"/{uuid.uuid4()}"), ("POST", f"/{uuid.uuid4()}/interrupt"),
                                              ("GET", "/providers")])
    def test_no_token_is_401_with_coders_message(self, served, method, path):
        with Api(served.url, None) as anonymous:
            r = anonymous.call(method, path, TEXT if method == "POST" else None)
        assert r.status_code == 401 and r.json()["message"] == SIGNED_OUT

    def test_a_refused_token_says_why(self, served):
        with Api(served.url, token(secret="another-secret-" + "x" * 32)) as forged:
            r = forged.get("")
        assert r.status_code == 401 and r.json() == {"message": SIGNED_OUT,
                                                      "detail": "token signature does not verify"}
        with Api(served.url, token(expires_in=1) + "x") as broken:
            assert broken.get("").status_code == 401

    def test_the_coder_session_token_header_works_as_bearer_does(self, served):
        tok = token("header-user")
        with Api(served.url, tok, header="coder-session-token") as by_header, Api(served.url, tok) as by_bearer:
            chat = by_header.create("hi")
            assert [c["id"] for c in by_bearer.get("").json()] == [chat["id"]]
        r = requests.get(served.url + API, cookies={"coder_session_token": tok}, timeout=10)
        assert r.status_code == 200 and r.json()[0]["id"] == chat["id"]

    def test_a_stream_refuses_before_upgrading(self, served, api):
        chat = api.create("hi")
        cases = [(None, f"/{chat['id']}/stream", 401), (token("intruder"), f"/{chat['id']}/stream", 404),
                 (token("x"), f"/{uuid.uuid4()}/stream", 404), (token("x"), "/not-a-uuid/stream", 400)]
        for tok, path, status in cases:
            with pytest.raises(websocket.WebSocketBadStatusException) as caught:
                Frames(ws_url(served.url, path), tok)
            assert caught.value.status_code == status
            body = json.loads(caught.value.resp_body)
            assert body["message"] == {401: SIGNED_OUT, 404: NOT_FOUND["message"],
                                       400: 'Invalid UUID "not-a-uuid".'}[status]

    def test_a_browser_passes_the_token_in_the_query(self, served, api):
        chat = api.create("hi")
        tok = api.session.headers["Authorization"].split()[1]
        with Frames(ws_url(served.url, f"/{chat['id']}/stream?coder_session_token={tok}"), None) as f:
            assert f.recv()["type"] == "data"

    def test_admin_is_a_permission_of_the_token(self, served):
        claims = verify_token(admin_token(), SECRET)
        assert claims["permissions"] == {"admin": True}
        assert Permissions.from_claim(claims["permissions"]).admin and not Permissions().admin
        with Api(served.url, token(permissions={"admin": True})) as admin:
            assert admin.get("/providers").status_code == 200
        plain = verify_token(create_token("x", "proj", SECRET, None), SECRET)
        forged = jwt.encode({**plain, "permissions": {"admin": "yes"}}, SECRET, algorithm="HS256")
        with Api(served.url, forged) as odd:
            r = odd.get("/providers")
        assert r.status_code == 401 and r.json()["detail"] == "token permissions.admin must be true or false"

    def test_the_secret_never_shows(self, served):
        assert SECRET not in served.output() and API_KEY not in served.output()


class TestChats:
    def test_create_is_201_pending_with_a_fallback_title(self, api):
        r = api.post("", {"content": [{"type": "text", "text": "List the files in my home directory please"}]})
        assert r.status_code == 201
        chat = r.json()
        assert chat["status"] == "pending" and chat["title"] == "List the files in my home…"
        assert chat["root_chat_id"] == chat["id"] and "diff_status" not in chat
        uuid.UUID(chat["owner_id"])
        assert chat["total_usage"]["cost_usd"] == "0"

    @pytest.mark.parametrize("payload, message", [
        (b"{", "Request body must be valid JSON."),
        (b"", "Request body must be valid JSON."),
        (b'{"content": 5}', "Request body must be valid JSON."),
        (b"{}", "Content is required."),
        (b'{"content": [{"type": "text", "text": ""}]}', "Invalid input part."),
        (b'{"content": [{"type": "file", "text": "x"}]}', "Invalid input part."),
        (b'{"content": [{"type": "text", "text": "x"}], "workspace_id": "6b0e9f4e-3c1a-4c2e-9b7e-1f0a2d3c4b5a"}',
         "Workspace not found or you do not have access to this resource"),
        (b'{"content": [{"type": "text", "text": "x"}], "model_config_id": "00000000-0000-0000-0000-000000000000"}',
         "Invalid model config ID."),
        (b'{"content": [{"type": "text", "text": "x"}], "model_config_id": "6b0e9f4e-3c1a-4c2e-9b7e-1f0a2d3c4b5a"}',
         "Invalid model config ID."),
    ])
    def test_bad_creates_are_400_with_coders_message(self, api, payload, message):
        r = api.post("", raw=payload)
        assert r.status_code == 400 and r.json()["message"] == message
        assert api.get("").json() == []  # nothing half-made

    def test_an_oversized_body_is_413(self, api):
        r = api.post("", raw=b'{"content": [{"type": "text", "text": "' + b"x" * (5 << 20) + b'"}]}')
        assert r.status_code == 413

    def test_list_is_the_owners_newest_first_with_diff_status(self, api, served):
        first = api.create("first")
        second = api.create("second")
        with Api(served.url, token("someone-else")) as other:
            other.create("not yours")
        api.wait(first["id"])
        api.wait(second["id"])
        listed = api.get("").json()
        assert {c["id"] for c in listed} == {first["id"], second["id"]}
        assert [c["updated_at"] for c in listed] == sorted((c["updated_at"] for c in listed), reverse=True)
        assert all(c["diff_status"]["changed_files"] == 0 for c in listed)

    def test_get_has_visible_messages_and_the_queue(self, api):
        chat = api.create("hi")
        got = api.wait(chat["id"])
        assert [m["role"] for m in got["messages"]] == ["user", "assistant"]  # the system prompt stays hidden
        assert got["queued_messages"] == [] and got["chat"]["status"] == "waiting"
        assert got["messages"][1]["usage"]["context_limit"] == 200000

    def test_ids_that_are_not_uuids_are_400_and_unknown_or_others_are_404(self, api, served):
        assert api.get("/nope").status_code == 400
        assert api.get("/nope").json()["message"] == 'Invalid UUID "nope".'
        assert api.get(f"/{uuid.uuid4()}").json() == NOT_FOUND
        chat = api.create("mine")
        with Api(served.url, token("intruder")) as intruder:
            for method, path, body in (("GET", "", None), ("DELETE", "", None), ("POST", "/messages", TEXT),
                                       ("POST", "/interrupt", None), ("PATCH", "/messages/1", TEXT),
                                       ("GET", "/diff-status", None), ("GET", "/diff", None),
                                       ("DELETE", "/queue/1", None), ("POST", "/queue/1/promote", None)):
                r = intruder.call(method, f"/{chat['id']}{path}", body)
                assert (r.status_code, r.json()) == (404, NOT_FOUND), (method, path)
        assert api.chat(chat["id"])["chat"]["id"] == chat["id"]  # untouched

    def test_delete_is_204_and_takes_sub_chats(self, api):
        chat = api.create("SPAWN sub task")
        api.wait(chat["id"])
        assert len(api.get("").json()) == 2
        assert api.delete(f"/{chat['id']}").status_code == 204
        assert api.get("").json() == [] and api.get(f"/{chat['id']}").status_code == 404
        assert api.delete(f"/{chat['id']}").status_code == 404

    def test_diff_routes_answer_with_empty_diffs(self, api):
        chat = api.create("hi")
        assert api.get(f"/{chat['id']}/diff-status").json() == {"chat_id": chat["id"], "changes_requested": False,
                                                                "additions": 0, "deletions": 0, "changed_files": 0}
        assert api.get(f"/{chat['id']}/diff").json() == {"chat_id": chat["id"]}

    def test_unknown_routes_and_methods(self, api):
        chat = api.create("hi")
        assert (api.get(f"/{chat['id']}/git-changes").status_code, api.get(f"/{chat['id']}/git-changes").json()) == \
               (404, {"message": "Route not found."})
        r = api.patch(f"/{chat['id']}", {"title": "x"})
        assert r.status_code == 405 and r.json() == {"message": "Method not allowed."}


class TestMessages:
    def test_a_message_to_an_idle_chat_is_sent_and_to_a_busy_one_queued(self, api):
        chat = api.create("hi")
        api.wait(chat["id"])
        sent = api.send(chat["id"], "DRIP 20 0.05")  # a run long enough for the next message to find it busy
        assert sent["queued"] is False and sent["message"]["role"] == "user" and "queued_message" not in sent
        queued = api.send(chat["id"], "and again")
        assert queued["queued"] is True and "message" not in queued
        assert queued["queued_message"]["content"] == [{"type": "text", "text": "and again"}]

    def test_the_twenty_first_queued_message_is_429(self, api):
        chat = busy_chat(api)
        for i in range(20):
            assert api.send(chat["id"], f"q{i}")["queued"] is True
        r = api.post(f"/{chat['id']}/messages", {"content": [{"type": "text", "text": "one too many"}]})
        assert r.status_code == 429
        assert r.json() == {"message": "Message queue is full.", "detail": "Maximum 20 messages can be queued."}
        assert len(api.chat(chat["id"])["queued_messages"]) == 20
        api.delete(f"/{chat['id']}")

    def test_bad_message_bodies_are_400(self, api):
        chat = api.create("hi")
        assert api.post(f"/{chat['id']}/messages", {"content": []}).json() == {
            "message": "Content is required.", "detail": "Content cannot be empty."}
        assert api.post(f"/{chat['id']}/messages", raw=b"[1]").status_code == 400
        assert api.post(f"/{uuid.uuid4()}/messages", TEXT).status_code == 404

    def test_edit_rules(self, api):
        chat = api.create("hi")
        got = api.wait(chat["id"])
        user, reply = got["messages"]
        r = api.patch(f"/{chat['id']}/messages/{reply['id']}", TEXT)
        assert (r.status_code, r.json()) == (400, {"message": "Only user messages can be edited."})
        r = api.patch(f"/{chat['id']}/messages/abc", TEXT)
        assert (r.status_code, r.json()) == (400, {"message": "Invalid chat message ID.",
                                                   "detail": "Message ID must be a positive integer."})
        r = api.patch(f"/{chat['id']}/messages/{10 ** 12}", TEXT)
        assert (r.status_code, r.json()) == (404, {"message": "Chat message not found.",
                                                   "detail": "Message does not belong to this chat."})
        other = api.create("other")
        r = api.patch(f"/{other['id']}/messages/{user['id']}", TEXT)  # a message of another chat
        assert r.status_code == 404
        r = api.patch(f"/{chat['id']}/messages/{user['id']}", {"content": [{"type": "text", "text": "edited"}]})
        assert r.status_code == 200 and r.json()["id"] == user["id"] and r.json()["content"][0]["text"] == "edited"

    def test_interrupting_an_idle_chat_changes_nothing(self, api):
        chat = api.create("hi")
        before = api.wait(chat["id"])["chat"]
        r = api.post(f"/{chat['id']}/interrupt")
        assert r.status_code == 200 and r.json()["status"] == "waiting"
        assert r.json()["updated_at"] == before["updated_at"]
        assert api.post(f"/{uuid.uuid4()}/interrupt").status_code == 404

    def test_queue_delete_and_promote(self, api):
        chat = busy_chat(api)
        a = api.send(chat["id"], "a")["queued_message"]
        b = api.send(chat["id"], "b")["queued_message"]
        assert api.delete(f"/{chat['id']}/queue/{10 ** 12}").status_code == 204
        assert api.delete(f"/{chat['id']}/queue/x").json() == {"message": "Invalid queued message ID."}
        assert api.delete(f"/{chat['id']}/queue/{a['id']}").status_code == 204
        r = api.post(f"/{chat['id']}/queue/{b['id']}/promote")
        assert r.status_code == 200 and r.json()["role"] == "user" and r.json()["content"][0]["text"] == "b"
        assert api.post(f"/{chat['id']}/queue/{b['id']}/promote").status_code == 404
        got = api.wait(chat["id"])
        assert got["queued_messages"] == [] and got["messages"][-1]["content"][0]["text"] == "echo: b"


class TestModelsAndAdmin:
    def test_the_catalog_is_for_everyone(self, api):
        catalog = api.get("/models").json()
        [anthropic] = [p for p in catalog["providers"] if p["provider"] == "anthropic"]
        assert anthropic["available"] is True
        assert {m["id"] for m in anthropic["models"]} >= {"anthropic:claude-sonnet-4-5-20250929",
                                                         "anthropic:claude-haiku-4-5"}

    @pytest.mark.parametrize("method, path", [("GET", "/providers"), ("POST", "/providers"),
                                              ("PATCH", f"/providers/{uuid.uuid4()}"),
                                              ("DELETE", f"/providers/{uuid.uuid4()}"), ("GET", "/model-configs"),
                                              ("POST", "/model-configs"), ("PATCH", f"/model-configs/{uuid.uuid4()}"),
                                              ("DELETE", f"/model-configs/{uuid.uuid4()}")])
    def test_admin_routes_are_403_for_members(self, api, method, path):
        r = api.call(method, path, {"provider": "openai"} if method in ("POST", "PATCH") else None)
        assert r.status_code == 403 and r.json()["message"] == "Forbidden."

    def test_providers_lifecycle_and_the_key_never_comes_back(self, admin, served):
        listed = admin.get("/providers").json()
        assert [p["provider"] for p in listed][:8] == ["anthropic", "azure", "bedrock", "google", "openai",
                                                       "openai-compat", "openrouter", "vercel"]
        secret_key = "sk-or-" + uuid.uuid4().hex
        r = admin.post("/providers", {"provider": "OpenRouter", "api_key": secret_key})
        assert r.status_code == 201 and r.json()["has_api_key"] is True and r.json()["source"] == "database"
        provider = r.json()
        assert admin.post("/providers", {"provider": "openrouter"}).json() == {"message": "Chat provider already exists."}
        assert admin.post("/providers", {"provider": "nope"}).json()["message"] == "Invalid provider."
        assert admin.post("/providers", {"provider": "vercel", "base_url": "nope"}).json()["message"] == \
               "Invalid provider base URL."
        r = admin.patch(f"/providers/{provider['id']}", {"display_name": "Routed", "base_url": "https://x.test/v1"})
        assert r.status_code == 200 and r.json()["display_name"] == "Routed" and r.json()["has_api_key"] is True
        assert r.json()["base_url"] == "https://x.test/v1"
        assert admin.patch(f"/providers/{provider['id']}", {"api_key": ""}).json()["has_api_key"] is False
        assert admin.patch(f"/providers/{uuid.uuid4()}", {}).status_code == 404
        assert admin.patch("/providers/nope", {}).json() == {"message": "Invalid chat provider ID."}
        assert admin.delete(f"/providers/{provider['id']}").status_code == 204
        everything = json.dumps(admin.get("/providers").json()) + served.output()
        assert secret_key not in everything

    def test_model_configs_lifecycle(self, admin):
        r = admin.post("/model-configs", {"provider": "anthropic", "model": "claude-opus-4-1", "context_limit": 200000,
                                          "model_config": {"max_output_tokens": 1000}})
        assert r.status_code == 201
        config = r.json()
        assert config["is_default"] is False and config["compression_threshold"] == 70
        assert config["model_config"] == {"max_output_tokens": 1000}
        assert admin.post("/model-configs", {"provider": "anthropic", "model": "claude-opus-4-1",
                                             "context_limit": 5}).status_code == 409
        assert admin.post("/model-configs", {"provider": "google", "model": "gemini", "context_limit": 5}).json() == \
               {"message": "Chat provider is not configured."}
        assert admin.post("/model-configs", {"provider": "anthropic", "model": "m"}).json()["message"] == \
               "Context limit is required."
        r = admin.patch(f"/model-configs/{config['id']}", {"display_name": "Opus", "compression_threshold": 80})
        assert r.status_code == 200 and r.json()["display_name"] == "Opus" and r.json()["compression_threshold"] == 80
        assert admin.patch(f"/model-configs/{config['id']}", {"context_limit": -1}).json() == {
            "message": "Context limit must be greater than zero."}
        assert admin.delete(f"/model-configs/{config['id']}").status_code == 204
        assert admin.patch(f"/model-configs/{config['id']}", {}).status_code == 404
        assert config["id"] not in {c["id"] for c in admin.get("/model-configs").json()}
        assert admin.get("/model-configs").json()[0]["is_default"] in (True, False)

    def test_a_chat_can_name_its_model_config(self, admin, api, fake):
        configs = {c["model"]: c["id"] for c in admin.get("/model-configs").json()}
        chat = api.create("which model", model_config_id=configs["claude-haiku-4-5"])
        assert chat["last_model_config_id"] == configs["claude-haiku-4-5"]
        got = api.wait(chat["id"])
        assert got["messages"][-1]["model_config_id"] == configs["claude-haiku-4-5"]
        assert any(b["model"] == "claude-haiku-4-5" and b["messages"][-1]["content"][-1].get("text") == "which model"
                   for b in fake.bodies())


class TestEmbedded:
    def test_a_store_with_no_chat_backend_serves_everything_else(self):
        """An application's own store kind: the chats API answers 501, the rest of the server works."""
        from convo import MemoryStore
        from convo.server import ServerThread, create_app
        from convo.testing import ScriptedService

        class OwnStore:  # a store of the application's own, delegating to a MemoryStore
            def __init__(self) -> None:
                self._inner = MemoryStore()

            def __getattr__(self, name):
                return getattr(self._inner, name)

        app = create_app(service=ScriptedService([]), store=OwnStore(), secret=SECRET)
        with ServerThread(app) as server, Api(server.url, token()) as api:
            r = api.get("")
            assert r.status_code == 501 and r.json()["message"] == "The chats API is not available on this server."
            assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
            with pytest.raises(websocket.WebSocketBadStatusException) as caught:
                Frames(ws_url(server.url, f"/{uuid.uuid4()}/stream"), token())
            assert caught.value.status_code == 501
