import { connect } from "../src/index.js"; void connect;
