"""Browser executors: the headless Chromium worker and the extension's pairing.

``personad browser`` runs :class:`~daemon.browser.worker.BrowserWorker`, a
provider of ``cap:browser`` driving Debian's Chromium over the Chrome
DevTools Protocol (cdp.py) through a pipe (chromium.py). ``personad extension
pair`` prepares the Manifest V3 extension in ``extension/`` (extension.py).
See docs/browser.md.
"""
