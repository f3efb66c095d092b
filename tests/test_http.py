"""The HTTP seam: proxies and CA settings from the environment, looked up once per origin."""

from __future__ import annotations

import pytest

from convo import RetryPolicy
from convo.errors import ProviderError
from convo.providers import _http
from tests.servers import Reply, ScriptedHTTPServer


def refuse(status, body, request_id=None) -> ProviderError:
    return ProviderError("bad", status_code=status)


def get(session, url: str):
    resp = _http.send(session, url, None, headers={}, timeout=5, retry=RetryPolicy.none(), method="GET",
                      error_from_body=refuse)
    resp.close()
    return resp


@pytest.fixture
def clean_proxy_env(monkeypatch):
    for name in _http._ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class TestEnvironmentSettings:
    def test_proxy_from_environment_then_no_proxy_then_unset(self, clean_proxy_env):
        """The cached lookup follows every change of the variables that matter."""
        monkeypatch = clean_proxy_env
        ok = Reply(200, "ok")
        with ScriptedHTTPServer(default=ok) as proxy, ScriptedHTTPServer(default=ok) as target:
            session = _http.new_session()
            url = target.url + "/v1/thing"

            get(session, url)
            assert len(target.requests) == 1 and not proxy.requests

            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            get(session, url)
            # a proxy is sent the absolute URL
            assert [r.path for r in proxy.requests] == [url]

            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            get(session, url)
            assert len(target.requests) == 2 and len(proxy.requests) == 1

            monkeypatch.delenv("NO_PROXY")
            get(session, url)
            assert len(proxy.requests) == 2

            monkeypatch.delenv("HTTP_PROXY")
            get(session, url)
            assert len(target.requests) == 3 and len(proxy.requests) == 2

    def test_ca_bundle_from_environment_matches_requests(self, clean_proxy_env, tmp_path):
        import requests

        bundle = tmp_path / "ca.pem"
        bundle.write_text("")
        clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        ours = _http.new_session().merge_environment_settings("https://api.example.invalid/x", {}, None, None, None)
        theirs = requests.Session().merge_environment_settings("https://api.example.invalid/x", {}, None, None, None)
        assert ours == theirs and ours["verify"] == str(bundle)

    def test_trust_env_off_ignores_the_environment(self, clean_proxy_env):
        clean_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        with ScriptedHTTPServer(default=Reply(200, "ok")) as target:
            session = _http.new_session()
            session.trust_env = False
            get(session, target.url + "/x")
            assert len(target.requests) == 1


class TestPostJson:
    def test_body_dropped_mid_way_is_retried_from_the_same_budget(self):
        text = '{"answer": 42, "padding": "' + "x" * 200 + '"}'
        cut = Reply(200, b"", {"content-type": "application/json"}, chunks=(text[:30], text[30:]), drop_after=1)
        whole = Reply(200, text, {"content-type": "application/json"})
        kwargs = dict(headers={}, timeout=5, error_from_body=refuse)
        with ScriptedHTTPServer([cut, whole]) as server:
            data, resp = _http.post_json(_http.new_session(), server.url, {"q": 1},
                                         retry=RetryPolicy(max_attempts=2, initial_delay=0.01), **kwargs)
        assert data["answer"] == 42 and resp.status_code == 200
        assert len(server.requests) == 2
        with ScriptedHTTPServer([cut, cut, whole]) as server:
            with pytest.raises(_http.APIConnectionError):
                _http.post_json(_http.new_session(), server.url, {"q": 1},
                                retry=RetryPolicy(max_attempts=2, initial_delay=0.01), **kwargs)
        assert len(server.requests) == 2

    def test_malformed_json_is_a_format_error(self):
        with ScriptedHTTPServer([Reply(200, '{"cut": ', {"content-type": "application/json"})]) as server:
            with pytest.raises(_http.ResponseFormatError, match="not JSON"):
                _http.post_json(_http.new_session(), server.url, {}, headers={}, timeout=5,
                                retry=RetryPolicy.none(), error_from_body=refuse)
