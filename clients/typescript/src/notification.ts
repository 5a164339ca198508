/**
 * What a pushed frame shows as a notification. Kept apart from `push.ts` (which needs a
 * window's APIs) so that a service worker can import it alone.
 */

/** A notification for a pushed frame: a title and options for `showNotification`. One `tag` per
 * model and type, so a newer push replaces the older one on screen. A frame the server had to
 * shorten (`truncated`) says what it was. */
export function notificationOf(frame: unknown): { title: string; options: NotificationOptions } {
  const f = (frame ?? {}) as { type?: string; topic?: string; data?: Record<string, unknown>; truncated?: boolean };
  const data = f.data ?? {};
  const text = (name: string) => (typeof data[name] === "string" ? (data[name] as string) : undefined);
  const model = text("model_id");
  const type = f.type ?? "notification";
  const status = text("new_status") ?? text("new_availability") ?? text("status") ?? text("level");
  const title = text("title") ?? (model ? `${model}: ${status ?? type.replaceAll("_", " ")}` : type.replaceAll("_", " "));
  const body = f.truncated
    ? "open the app for the details"
    : (text("message") ?? text("reason") ?? text("error_message") ?? text("description") ?? "");
  return { title, options: { body, tag: `${type}:${model ?? text("alert_id") ?? ""}`, data: frame } };
}
