"""The chat page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium against the real server. Skipped where no browser is installed (`.ci/run` installs one).

Set CHAT_SCREENSHOT=docs/chat.png to keep the screenshot the test takes (docs/use.md shows it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from model.serve.server import PAGE
from prep.tokenizer import load_tokenizer, pad_vocab_size
from tests.model.conftest import save_tiny, tiny_model
from tests.model.serve.servers import running_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# As this machine's probe runs it: no sandbox as root, and no background traffic to a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1000,760", "--lang=zh-CN"]
WORDS = "你好，我是一个小模型。很高兴认识你！数学很有趣。"
API_KEY = "sesame"


def chat_model_that_speaks(tokenizer) -> torch.nn.Module:
    """A tiny chat model on the real Qwen2 tokenizer whose every next token is one of WORDS' tokens, at
    random, and <|im_end|> much more rarely: Chinese word salad, so the page shows real characters."""
    model = tiny_model(block_size=128, vocab_size=pad_vocab_size(len(tokenizer)))
    with torch.no_grad():
        v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(1))
        v /= v.norm()
        model.transformer.ln_f.weight.zero_()  # the last hidden state is v, whatever the input
        model.transformer.ln_f.bias.copy_(v)
        for token in tokenizer.encode(WORDS):
            model.transformer.wte.weight[token] = 20.0 * v
        model.transformer.wte.weight[tokenizer.im_end_id] = 16.0 * v
    return model


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium + chromedriver installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tok = load_tokenizer("qwen2")
    run = save_tiny(tmp_path_factory.mktemp("browser") / "demo-chat", "sft", "qwen2", model=chat_model_that_speaks(tok))
    with running_server(run, api_key=API_KEY) as s:
        yield s


# Records the body of every request the page sends, and how often the newest reply's text changed.
SPY = """
window.sentBodies = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (options && options.body) window.sentBodies.push(JSON.parse(options.body));
  return realFetch(url, options);
};
window.replyUpdates = 0;
new MutationObserver(() => window.replyUpdates++).observe(document.getElementById("messages"),
                                                           {childList: true, subtree: true, characterData: true});
"""


def wait(browser, condition, timeout: float = 60):
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: condition(b))


def replies(browser):
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def send(browser, text: str) -> None:
    before = len(replies(browser))
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda b: len(replies(b)) == before + 1)


def set_setting(browser, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)


def test_page_chats_with_streamed_replies_and_keeps_the_history(browser, server, tmp_path):
    browser.get(server.url + "/")
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda b: "401" in error.text)  # the server wants a key: the page says so
    assert "API key" in error.text and not error.text.startswith("Cannot reach")
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    set_setting(browser, "api-key", API_KEY)
    set_setting(browser, "max-tokens", "24")
    wait(browser, lambda b: b.find_element(By.ID, "model").text == "model: demo-chat")
    assert not error.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    browser.execute_script(SPY)

    send(browser, "你好")
    first = replies(browser)[0]
    wait(browser, lambda b: first.get_attribute("data-state") == "done")
    reply = first.text.split("\n")[0]
    assert reply and set(reply) <= set(WORDS)  # real Chinese characters, never a broken one
    assert browser.execute_script("return window.replyUpdates") > 6  # the reply arrived in pieces

    send(browser, "再说一句")
    second = replies(browser)[1]
    wait(browser, lambda b: second.get_attribute("data-state") == "done")
    bodies = browser.execute_script("return window.sentBodies")
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
    assert bodies[-1]["messages"][1]["content"] == reply and bodies[-1]["messages"][2]["content"] == "再说一句"
    assert bodies[-1]["stream"] is True and bodies[-1]["max_tokens"] == 24
    screenshot = Path(os.environ.get("CHAT_SCREENSHOT") or tmp_path / "chat.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    set_setting(browser, "max-tokens", "2000")  # a long reply, stopped by the Stop button
    send(browser, "讲个很长的故事")
    third = replies(browser)[2]
    wait(browser, lambda b: third.text.strip() != "")
    browser.find_element(By.ID, "stop").click()
    wait(browser, lambda b: third.get_attribute("data-state") == "stopped")
    assert "(stopped)" in third.text
    wait(browser, lambda b: server.app.state.scheduler.load == (0, 0), timeout=30)  # its generation ended too

    set_setting(browser, "max-tokens", "8")
    browser.find_element(By.ID, "new-chat").click()
    assert replies(browser) == []
    send(browser, "新的对话")
    wait(browser, lambda b: replies(b)[0].get_attribute("data-state") in ("done", "stopped"))
    assert [m["role"] for m in browser.execute_script("return window.sentBodies")[-1]["messages"]] == ["user"]


def test_page_says_when_the_server_is_down(browser, tmp_path):
    page = PAGE
    browser.get(page.as_uri())  # the page without its server: every request fails
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda b: error.is_displayed())
    assert "Cannot reach the server" in error.text
