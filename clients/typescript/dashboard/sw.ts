/**
 * The dashboard's service worker (`/push-sw.js`): shows each push modelcast sends this browser
 * as a notification, and a click opens (or focuses) the dashboard.
 */
/// <reference lib="webworker" />
import { notificationOf } from "../src/notification.js";

declare const self: ServiceWorkerGlobalScope;

self.addEventListener("push", (event) => {
  let frame: unknown;
  try {
    frame = event.data?.json();
  } catch {
    frame = { type: "notification", data: { message: event.data?.text() ?? "" } };
  }
  const { title, options } = notificationOf(frame);
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((windows) => {
      const open = windows.find((w) => new URL(w.url).pathname === "/");
      return open ? open.focus() : self.clients.openWindow("/");
    }),
  );
});
