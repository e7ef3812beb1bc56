"""The web UI in a real browser: headless Chromium, driven by Selenium, against ``pier serve``.

One registry (htpasswd users, an ACL, quotas and a retention rule) and one browser serve the
whole module. The images are pushed over the API first; then each test logs in as the user
it needs through the login form and goes through the pages as a person would: the login
form, search, sorting, the image and index pages, copy buttons, deleting a tag behind a
confirm(), hostile labels and annotations, what a user without delete rights and an
anonymous visitor see, and the keyboard. Every page visited is saved as a full-page PNG in
the module's tmp folder and copied to ``tests/artifacts/ui/``: the artefact a reviewer looks at.

Chromium and chromium-driver come from Debian (``/usr/bin/chromium``, ``/usr/bin/chromedriver``);
without them the module fails (it never skips).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from oci.units import human_size

from .helpers import push_blob, push_index, push_manifest, wait_until, write_htpasswd
from .images import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Image,
    ImageIndex,
    build_image,
    build_index,
    gzip_bytes,
    layer_tar,
    random_files,
    sha256,
    write_blob,
)
from .servers import REPO_ROOT, PierServer

pytestmark = pytest.mark.slow  # a real browser (Chromium) besides the registry process

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "ui"
USERS = {"alice": "wonderland", "bob": "builder"}
# bob may only pull; every other user may do everything; anonymous visitors nothing.
ACL = """
[[rule]]
account = "bob"
repository = "*"
actions = ["pull"]

[[rule]]
account = "*"
repository = "*"
actions = ["*"]
"""
QUOTA_BYTES = 50 << 20
QUOTAS = [{"namespace": "ui", "limit": "50MiB"}]
RETENTION = [{"repositories": "ui/app", "keep_last": 2}]
TIMEOUT = 10.0
# What a hostile pusher writes wherever the UI shows pushed text.
HOSTILE_IMG = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_SCRIPT = "<script>document.title='pwned'</script>"
HOSTILE_ALERT = '"><svg onload=alert(1)>'


@dataclass
class Seeded:
    """What the module pushed, to compare the pages with."""

    app: dict[str, Image]  # ui/app by tag; pushed beta, alpha, gamma; sizes beta > gamma > alpha
    multi: ImageIndex  # ui/multi:v1
    hostile_digest: str  # ui/hostile:evil


@dataclass
class Site:
    server: PierServer
    seeded: Seeded
    screenshots: Path

    @property
    def url(self) -> str:
        return self.server.url


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- the registry, its content, the browser ---------------------------------------------------
def push_image(base: str, repo: str, image: Image, *tags: str) -> None:
    headers = basic("alice")
    for blob in image.blobs:
        push_blob(base, repo, blob, headers)
    for tag in tags:
        push_manifest(base, repo, tag, image.manifest, headers)


def push_hostile(base: str, folder: Path) -> str:
    """ui/hostile:evil, written by hand: script and markup in its labels, annotations, history,
    environment and command; the manifest's digest."""
    tar = layer_tar({"etc/motd": b"hostile\n"})
    layer = write_blob(folder, OCI_LAYER_GZIP, gzip_bytes(tar))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Labels": {"x": HOSTILE_IMG, "y": HOSTILE_SCRIPT, HOSTILE_ALERT: "key"},
            "Env": [f"EVIL={HOSTILE_SCRIPT}"],
            "Cmd": [HOSTILE_IMG],
            "WorkingDir": HOSTILE_ALERT,
            "User": HOSTILE_IMG,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created_by": f"/bin/sh -c #(nop) LABEL y={HOSTILE_SCRIPT}"}],
    }
    config_blob = write_blob(folder, OCI_CONFIG, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": {
            "x": HOSTILE_IMG,
            "y": HOSTILE_SCRIPT,
            "org.opencontainers.image.description": f"A description {HOSTILE_SCRIPT}{HOSTILE_IMG}",
        },
    }
    manifest_blob = write_blob(folder, OCI_MANIFEST, json.dumps(manifest).encode())
    headers = basic("alice")
    for blob in (config_blob, layer):
        push_blob(base, "ui/hostile", blob, headers)
    push_manifest(base, "ui/hostile", "evil", manifest_blob, headers)
    return manifest_blob.digest


def seed(base: str, folder: Path) -> Seeded:
    app = {}
    # Pushed in this order (so by date: gamma, alpha, beta), with beta > gamma > alpha in size:
    # sorting by name, date and size gives three different orders.
    for tag, size, rng in (("beta", 400_000, 1), ("alpha", 20_000, 2), ("gamma", 150_000, 3)):
        app[tag] = build_image(folder / "app", tag, layers=[random_files([size], seed=rng)])
        push_image(base, "ui/app", app[tag], tag)
    multi = build_index(folder / "multi", "v1", layers=[random_files([1000], seed=4)])
    push_index(base, "ui/multi", multi, basic("alice"))
    trash = build_image(folder / "trash", "keep", layers=[random_files([1000], seed=5)])
    push_image(base, "ui/trash", trash, "keep", "doomed")
    tools = build_image(folder / "tools", "latest", layers=[random_files([1000], seed=6)])
    push_image(base, "other/tools", tools, "latest")
    hostile = push_hostile(base, folder / "hostile")
    return Seeded(app, multi, hostile)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("ui-browser")
    htpasswd = write_htpasswd(folder / "htpasswd", USERS)
    acl = folder / "acl.toml"
    acl.write_text(ACL)
    server = PierServer(
        folder / "data",
        "--htpasswd",
        str(htpasswd),
        "--acl",
        str(acl),
        "--admins",
        "alice",
        "--quotas",
        json.dumps(QUOTAS),
        "--retention",
        json.dumps(RETENTION),
    ).start()
    screenshots = folder / "screenshots"
    screenshots.mkdir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if "PYTEST_XDIST_WORKER" not in os.environ:  # with xdist, another worker may be writing them
        for old in ARTIFACTS.glob("*.png"):
            old.unlink()  # a screenshot of an earlier run would pass for this run's
    try:
        yield Site(server, seed(server.url, folder / "layouts"), screenshots)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the web UI tests need Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver)"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    # The driver is given: Selenium Manager must not try to download one (no internet here).
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


# -- what a person does -----------------------------------------------------------------------
def screenshot(site: Site, driver: WebDriver, name: str) -> Path:
    """The whole page (not only the window) as ``name``.png, kept as a test artefact."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = site.screenshots / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    shutil.copy2(path, ARTIFACTS / path.name)
    return path


def wait_for_page(driver: WebDriver, old: WebElement) -> None:
    """After a click that navigates: the old document gone and the new one loaded."""

    def replaced() -> bool:
        try:
            old.tag_name  # noqa: B018 - raises once the document that held it is gone
        except WebDriverException:  # stale, or (mid-navigation) "does not belong to the document"
            try:
                return driver.execute_script("return document.readyState") == "complete"
            except WebDriverException:  # the new document is not there yet either
                return False
        return False

    wait_until(replaced, TIMEOUT, "the next page to load")


def follow(driver: WebDriver, element: WebElement) -> None:
    """Click a link or a submit button and wait for the page it leads to."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait_for_page(driver, old)


def log_out(driver: WebDriver) -> None:
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def log_in(site: Site, driver: WebDriver, user: str, password: str | None = None) -> None:
    """Through the login form, as a fresh visitor."""
    log_out(driver)
    driver.get(f"{site.url}/ui/login")
    fill_login(driver, user, USERS[user] if password is None else password)


def fill_login(driver: WebDriver, user: str, password: str) -> None:
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    follow(driver, driver.find_element(By.ID, "login-button"))


def column(driver: WebDriver, table: str, number: int = 1) -> list[str]:
    cells = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr td:nth-child({number})")
    return [cell.text.split("\n")[0].strip() for cell in cells]


def tag_order(driver: WebDriver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
    return [row.get_attribute("data-tag") or "" for row in rows]


def table(driver: WebDriver, css: str) -> list[list[str]]:
    """The text of each cell of a table's body, row by row."""
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"{css} tbody tr")
    ]


def pairs(element: WebElement, key: str, value: str) -> dict[str, str]:
    """A two-column table (th, td) or a definition list (dt, dd) as a dict."""
    keys = element.find_elements(By.TAG_NAME, key)
    values = element.find_elements(By.TAG_NAME, value)
    assert len(keys) == len(values), element.text
    return {k.text: v.text for k, v in zip(keys, values, strict=True)}


def open_alert(driver: WebDriver) -> Alert | None:
    """The alert (or confirm) the page shows, None while there is none."""
    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def confirm_dialog(driver: WebDriver) -> Alert:
    """The confirm() the page opened, once it is open."""
    alert = wait_until(lambda: open_alert(driver), TIMEOUT, "the confirm()")
    assert alert is not None
    return alert


def copied(button: WebElement) -> bool:
    return "copied" in (button.get_attribute("class") or "").split()


def no_alert(driver: WebDriver) -> bool:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    text = alert.text
    alert.dismiss()
    raise AssertionError(f"the page opened an alert: {text!r}")


def tags_via_api(site: Site, repo: str) -> list[str]:
    answer = httpx.get(f"{site.url}/v2/{repo}/tags/list", headers=basic("alice"))
    assert answer.status_code == 200, answer.text
    return sorted(answer.json()["tags"] or [])


def nav_links(driver: WebDriver) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "header nav a")]


# -- the tests --------------------------------------------------------------------------------
def test_logging_in_through_the_form_shows_the_user_and_the_repositories(
    site: Site, browser: WebDriver
) -> None:
    log_out(browser)
    browser.get(f"{site.url}/ui/login")
    assert browser.title == "Log in · pier"
    screenshot(site, browser, "login")
    fill_login(browser, "alice", "not-her-password")
    assert browser.find_element(By.ID, "login-error").text == "Wrong user name or password."
    assert not browser.find_elements(By.ID, "user")
    screenshot(site, browser, "login-refused")

    # The form's POST carries the browser's Origin header: a page policy that made it "null"
    # (Referrer-Policy: no-referrer) refused every form here.
    fill_login(browser, "alice", USERS["alice"])
    assert browser.current_url == f"{site.url}/ui/"
    assert browser.find_element(By.ID, "user").text == "alice"
    names = ["other/tools", "ui/app", "ui/hostile", "ui/multi", "ui/trash"]
    assert column(browser, "repositories") == names
    assert column(browser, "repositories", 2) == ["1", "3", "1", "1", "2"]  # tags
    assert browser.find_element(By.ID, "count").text == "5 repositories"
    assert nav_links(browser) == ["pier", "Repositories", "Usage", "Retention", "Audit log"]
    screenshot(site, browser, "repositories")


def test_search_then_sort_the_tags_by_name_date_and_size(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    search = browser.find_element(By.ID, "q")
    search.send_keys("ui/")
    old = browser.find_element(By.TAG_NAME, "html")
    search.send_keys(Keys.ENTER)
    wait_for_page(browser, old)
    assert column(browser, "repositories") == ["ui/app", "ui/hostile", "ui/multi", "ui/trash"]
    assert browser.find_element(By.ID, "count").text == "4 repositories matching “ui/”"
    assert browser.find_element(By.ID, "q").get_attribute("value") == "ui/"
    screenshot(site, browser, "repositories-search")

    follow(browser, browser.find_element(By.LINK_TEXT, "ui/app"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "ui/app"
    assert tag_order(browser) == ["gamma", "alpha", "beta"]  # newest first by default
    screenshot(site, browser, "repository")
    clicks = [
        ("sort-name", ["alpha", "beta", "gamma"]),
        ("sort-name", ["gamma", "beta", "alpha"]),  # the same header again turns the order
        ("sort-size", ["beta", "gamma", "alpha"]),  # largest first
        ("sort-size", ["alpha", "gamma", "beta"]),
        ("sort-date", ["gamma", "alpha", "beta"]),
        ("sort-date", ["beta", "alpha", "gamma"]),  # oldest first
    ]
    for link, expected in clicks:
        follow(browser, browser.find_element(By.ID, link))
        assert tag_order(browser) == expected, f"after clicking #{link}"
    assert browser.find_element(By.ID, "sort-date").text == "Pushed ↑"
    screenshot(site, browser, "repository-sorted-by-date-ascending")


def test_the_image_page_shows_layers_config_history_and_pull_commands(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    browser.get(f"{site.url}/ui/r/ui/app")
    follow(browser, browser.find_element(By.LINK_TEXT, "alpha"))
    image = site.seeded.app["alpha"]
    assert browser.title == "ui/app:alpha · pier"
    assert browser.find_element(By.ID, "digest").text == image.digest
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "section.variant h3")]
    assert headings == ["Config", "Layers", "History", "Referrers"], headings  # Environment: an h4
    config = pairs(browser.find_element(By.CSS_SELECTOR, "section.variant dl.facts"), "dt", "dd")
    assert config == {"Cmd": '["/bin/sh"]', "Working dir": "/", "Created": "2023-11-14T22:13:20Z"}
    layers = browser.find_elements(By.CSS_SELECTOR, "table.layers tbody tr code")
    assert [c.get_attribute("title") for c in layers] == [layer.digest for layer in image.layers]
    assert [c.text for c in layers] == [layer.digest[7:19] for layer in image.layers]
    history = browser.find_element(By.CSS_SELECTOR, "pre.history").text
    assert history.splitlines() == ["pier tests: layer 1", "pier tests: layer 2"]
    commands = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "section.pull code")]
    host = site.server.host
    assert commands == [f"{tool} pull {host}/ui/app:alpha" for tool in ("pier", "docker", "podman")]
    screenshot(site, browser, "image")

    buttons = browser.find_elements(By.CSS_SELECTOR, "section.pull button.copy")
    assert [b.get_attribute("data-copy") for b in buttons] == commands
    for button in buttons:
        button.click()
        # pier.js takes the class off again after 1.5 s: look for it at once.
        what = f"the copy button of {button.get_attribute('data-copy')!r} to say it copied"
        wait_until(functools.partial(copied, button), 1.0, what)


def test_an_index_shows_each_platform(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    browser.get(f"{site.url}/ui/r/ui/multi")
    platforms = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#tags tbody tr .platform")]
    assert platforms == ["linux/amd64", "linux/arm64"]
    follow(browser, browser.find_element(By.LINK_TEXT, "v1"))
    index = site.seeded.multi
    assert browser.find_element(By.ID, "digest").text == index.digest
    assert "An index of 2 manifests." in browser.find_element(By.ID, "main").text
    sections = browser.find_elements(By.CSS_SELECTOR, "section.variant")
    titles = [s.find_element(By.TAG_NAME, "h2").text for s in sections]
    children = {image.architecture: image.digest for image in index.images}
    assert titles == [f"linux/{arch} {children[arch][7:19]}" for arch in ("amd64", "arm64")]
    for section, arch in zip(sections, ("amd64", "arm64"), strict=True):
        layers = section.find_elements(By.CSS_SELECTOR, "table.layers tbody tr code")
        assert [c.get_attribute("title") for c in layers] == [b.digest for b in index.image(arch).layers]
    screenshot(site, browser, "index")

    follow(browser, browser.find_element(By.LINK_TEXT, children["arm64"][7:19]))
    assert browser.find_element(By.ID, "digest").text == children["arm64"]
    assert browser.title == f"ui/multi@{children['arm64'][:19]} · pier"
    assert browser.find_element(By.CSS_SELECTOR, "section.variant h2").text == "linux/arm64"
    screenshot(site, browser, "index-child")


def test_deleting_a_tag_asks_first_then_the_tag_is_gone(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    browser.get(f"{site.url}/ui/r/ui/trash")
    assert tag_order(browser) == ["doomed", "keep"]

    browser.find_element(By.ID, "delete-doomed").click()
    question = confirm_dialog(browser)
    assert question.text == "Delete tag doomed?"
    question.dismiss()  # "Cancel": nothing happens
    assert tag_order(browser) == ["doomed", "keep"]
    assert tags_via_api(site, "ui/trash") == ["doomed", "keep"]

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, "delete-doomed").click()
    confirm_dialog(browser).accept()
    wait_for_page(browser, old)
    assert browser.current_url == f"{site.url}/ui/r/ui/trash"
    assert tag_order(browser) == ["keep"]
    assert not browser.find_elements(By.ID, "delete-doomed")
    assert tags_via_api(site, "ui/trash") == ["keep"]

    browser.get(f"{site.url}/ui/audit?repository=ui/trash&action=delete")
    entries = table(browser, "#audit")
    assert [(e[1], e[2], e[3], e[5]) for e in entries] == [("delete", "ui/trash", "doomed", "alice")], entries


def test_usage_retention_and_audit_pages_for_an_admin(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    browser.get(f"{site.url}/ui/usage")
    assert column(browser, "usage") == ["other", "ui"]
    quota = browser.find_element(By.CSS_SELECTOR, '#usage tr[data-namespace="ui"]')
    assert [td.text for td in quota.find_elements(By.TAG_NAME, "td")][3] == human_size(QUOTA_BYTES)
    assert quota.find_element(By.TAG_NAME, "meter").get_attribute("max") == str(QUOTA_BYTES)
    screenshot(site, browser, "usage")

    browser.get(f"{site.url}/ui/retention")
    assert column(browser, "rules") == ["ui/app"]
    plan = table(browser, "#plan")
    assert [p[:3] for p in plan] == [["ui/app", "tag", "beta"]], plan  # not among the last 2 pushed
    assert browser.find_element(By.ID, "run-retention").is_displayed()
    screenshot(site, browser, "retention")

    browser.get(f"{site.url}/ui/audit?action=push")
    pushed = {(e[2], e[3]) for e in table(browser, "#audit")}
    assert {("ui/app", "alpha"), ("ui/app", "beta"), ("ui/app", "gamma"), ("ui/hostile", "evil")} <= pushed
    assert set(column(browser, "audit", 6)) == {"alice"}
    browser.get(f"{site.url}/ui/audit")
    screenshot(site, browser, "audit")


def test_hostile_labels_and_annotations_are_text(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    browser.get(f"{site.url}/ui/r/ui/hostile/-/m/evil")
    # driver.get returns after the load event: an injected <img onerror> or <svg onload> has run.
    assert no_alert(browser)
    assert browser.execute_script("return document.title") == "ui/hostile:evil · pier"
    main = browser.find_element(By.ID, "main")
    assert not main.find_elements(By.CSS_SELECTOR, "img, script, svg, iframe")
    assert browser.find_element(By.ID, "digest").text == site.seeded.hostile_digest
    labels, annotations = (pairs(t, "th", "td") for t in main.find_elements(By.CSS_SELECTOR, "table.labels"))
    assert labels == {HOSTILE_ALERT: "key", "x": HOSTILE_IMG, "y": HOSTILE_SCRIPT}
    assert annotations == {
        "org.opencontainers.image.description": f"A description {HOSTILE_SCRIPT}{HOSTILE_IMG}",
        "x": HOSTILE_IMG,
        "y": HOSTILE_SCRIPT,
    }
    config = pairs(main.find_element(By.CSS_SELECTOR, "section.variant dl.facts"), "dt", "dd")
    assert config["Cmd"] == json.dumps([HOSTILE_IMG])  # as JSON, not \u003c-escaped for a <script>
    assert (config["Working dir"], config["User"]) == (HOSTILE_ALERT, HOSTILE_IMG)
    assert main.find_element(By.CSS_SELECTOR, "ul.env").text == f"EVIL={HOSTILE_SCRIPT}"
    assert main.find_element(By.CSS_SELECTOR, "pre.history").text == f"LABEL y={HOSTILE_SCRIPT}"
    screenshot(site, browser, "image-hostile")

    # A search is echoed into the page twice: in the field and in the count.
    browser.get(f"{site.url}/ui/?{urlencode({'q': HOSTILE_IMG})}")
    assert no_alert(browser)
    assert browser.execute_script("return document.title") == "Repositories · pier"
    assert browser.find_element(By.ID, "q").get_attribute("value") == HOSTILE_IMG
    assert browser.find_element(By.ID, "count").text == f"0 repositories matching “{HOSTILE_IMG}”"
    assert not browser.find_elements(By.CSS_SELECTOR, "#main img")


def test_a_user_without_delete_rights_sees_no_delete_buttons(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "bob")
    assert browser.find_element(By.ID, "user").text == "bob"
    assert nav_links(browser) == ["pier", "Repositories", "Usage"]  # bob is no admin
    browser.get(f"{site.url}/ui/r/ui/app")
    assert sorted(tag_order(browser)) == ["alpha", "beta", "gamma"]
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#tags thead th")]
    assert "Delete" not in headers, headers
    assert not browser.find_elements(By.CSS_SELECTOR, "button.danger, [id^='delete-'], details.danger-zone")
    screenshot(site, browser, "repository-read-only")
    browser.get(f"{site.url}/ui/audit")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"


def test_an_anonymous_visitor_is_asked_to_log_in(site: Site, browser: WebDriver) -> None:
    log_in(site, browser, "alice")
    follow(browser, browser.find_element(By.ID, "logout"))
    assert not browser.find_elements(By.ID, "user")
    assert browser.find_element(By.ID, "count").text == "0 repositories"
    assert not browser.find_elements(By.ID, "repositories")
    assert "log in to see the repositories you may pull" in browser.find_element(By.ID, "main").text
    assert nav_links(browser) == ["pier", "Repositories", "Usage", "Log in"]
    screenshot(site, browser, "repositories-anonymous")

    browser.get(f"{site.url}/ui/r/ui/app")  # as if it did not exist
    assert browser.find_element(By.ID, "message").text == "repository name not known to registry"
    assert not browser.find_elements(By.ID, "tags")
    screenshot(site, browser, "repository-anonymous")

    browser.get(f"{site.url}/ui/audit")  # admins only: the login form, then back here
    assert browser.current_url.startswith(f"{site.url}/ui/login?next=")
    fill_login(browser, "alice", USERS["alice"])
    assert browser.current_url == f"{site.url}/ui/audit"
    assert browser.find_elements(By.ID, "audit")


def test_the_keyboard_reaches_the_skip_link_then_the_search_field(site: Site, browser: WebDriver) -> None:
    log_out(browser)
    browser.get(f"{site.url}/ui/login")  # the user name field has the focus already
    assert browser.switch_to.active_element.get_attribute("id") == "username"
    ActionChains(browser).send_keys("alice", Keys.TAB, USERS["alice"]).perform()
    old = browser.find_element(By.TAG_NAME, "html")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for_page(browser, old)
    assert browser.find_element(By.ID, "user").text == "alice"

    browser.get(f"{site.url}/ui/")
    ActionChains(browser).send_keys(Keys.TAB).perform()
    skip = browser.switch_to.active_element
    assert (skip.text, skip.get_attribute("href")) == ("Skip to content", f"{site.url}/ui/#main")
    assert skip.location["x"] >= 0, "the focused skip link must be on screen"
    reached = []
    for _ in range(12):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        reached.append(active.get_attribute("id") or active.text)
        if active.get_attribute("id") == "q":
            break
    assert reached == ["pier", "Repositories", "Usage", "Retention", "Audit log", "logout", "q"], reached
