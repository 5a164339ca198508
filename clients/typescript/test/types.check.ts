// Compile-time checks of the public types (`npm run check` runs tsc on this file; nothing
// executes it). A line marked @ts-expect-error must fail to compile, or tsc reports it.
import { connect } from "../src/index.js";
import type { TopicFrame } from "../src/index.js";

declare const client: ReturnType<typeof connect>;

export async function topicsNarrowMessages(): Promise<void> {
  const downloads = client.subscribe("download_progress");
  for await (const frame of downloads) {
    const topic: "download_progress" = frame.topic;
    const seq: number = frame.seq;
    if (frame.type === "download_progress_update") {
      const percent: number = frame.data.progress_percent;
      void percent;
    } else if (frame.type === "download_status_change") {
      const status: string = frame.data.new_status;
      void status;
    } else {
      const retry: "download_retry" = frame.type; // the only type left
      void retry;
    }
    // @ts-expect-error an alert is not a message of download_progress
    if (frame.type === "alert") void 0;
    void topic;
    void seq;
  }
  client.subscribe("alerts").on("message", (frame) => {
    const id: string = frame.data.alert_id;
    void id;
  });
  // @ts-expect-error not a topic
  client.subscribe("downloads");
  // @ts-expect-error filter takes model_ids
  client.subscribe("model_status", { filter: { models: ["x"] } });
}

export const frameOfStatus = (f: TopicFrame<"model_status">): string => {
  switch (f.type) {
    case "model_status_update":
      return f.data.availability_status;
    case "model_availability_change":
      return f.data.new_availability;
    case "batch_model_status_update":
      return String(f.data.count);
    case "model_lifecycle":
      return f.data.event;
  }
};
