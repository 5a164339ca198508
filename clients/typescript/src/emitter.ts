/** A minimal typed event emitter (no dependency, no Node `events`). */
export class Emitter<Events extends object> {
  #handlers: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};

  /** Calls `handler` on every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): () => void {
    (this.#handlers[event] ??= new Set()).add(handler);
    return () => this.off(event, handler);
  }

  /** Removes a handler added with `on`. */
  off<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): void {
    this.#handlers[event]?.delete(handler);
  }

  /** Calls every handler of `event`; a throwing handler does not stop the others. */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const handler of [...(this.#handlers[event] ?? [])]) {
      try {
        handler(value);
      } catch (error) {
        // A handler's bug must not break delivery to the others or the connection.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
