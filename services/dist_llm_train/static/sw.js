/* The report's service worker (experiments/webpage.py fills CACHE and FILES). It keeps the page and
 * every file it uses; each request goes to the network first, so a report rebuilt on disk shows at
 * once, and falls back to the kept copy when the server is gone or the machine is offline. */
"use strict";
const CACHE = "__CACHE__";
const FILES = ["__FILES__"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith("dlt-report-") && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  if (event.request.method !== "GET" || new URL(event.request.url).origin !== self.location.origin) return;
  event.respondWith(fetch(event.request)
    .then((response) => {
      if (response.ok) {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(event.request, copy));
      }
      return response;
    })
    .catch(() => caches.match(event.request, {ignoreSearch: true})
      .then((kept) => kept || (event.request.mode === "navigate" ? caches.match("./") : Response.error()))));
});
