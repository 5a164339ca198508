// Type-checked by `npm run check` (tsc -p test), never run: the README's Node usage compiles
// with the `ws` package and its types exactly as a user writes it, and so does the browser's.
import { WebSocket } from "ws";
import { connect } from "../src/index.js";

const node = connect("ws://127.0.0.1:8000/ws", { WebSocket });
node.close();

const browser = connect("ws://127.0.0.1:8000/ws", { WebSocket: globalThis.WebSocket });
browser.close();
