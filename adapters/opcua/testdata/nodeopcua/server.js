// node-opcua server for ferry's OPC UA interoperability tests.
//
//   node server.js PORT PKI_DIR [USER_PKI_DIR]
//
// Prints "READY <thumbprint>" (SHA-256 of the server certificate, lower hex)
// on stdout once it listens. Offers None, Basic256Sha256,
// Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with Sign and
// SignAndEncrypt; anonymous and username login (operator / secret).
// Client certificates are accepted automatically. With USER_PKI_DIR, X.509
// user login is offered too, for the user certificates in
// USER_PKI_DIR/trusted/certs only (others are refused and land in
// USER_PKI_DIR/rejected). Variables in namespace
// urn:ferry:nodeopcua: s=Temperature (Double, changes every 100 ms),
// s=Counter (Int32, +1 every 100 ms), s=Big (Int64 beyond 2^53),
// s=Setpoint (Double, read/write), s=ReadOnly (Double, read only),
// s=Secret (Double, not readable), and writable s=WInt16, s=WUInt32,
// s=WFloat, s=WBool, s=WString.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const {
  OPCUAServer, OPCUACertificateManager, Variant, DataType, SecurityPolicy,
  MessageSecurityMode, VariantArrayType,
} = require("node-opcua");

const port = parseInt(process.argv[2], 10);
const pki = process.argv[3];
const userPki = process.argv[4];

(async () => {
  const certificateManager = new OPCUACertificateManager({
    rootFolder: pki,
    automaticallyAcceptUnknownCertificate: true,
  });
  await certificateManager.initialize();
  let userCertificateManager;
  if (userPki) {
    userCertificateManager = new OPCUACertificateManager({
      rootFolder: userPki,
      automaticallyAcceptUnknownCertificate: false,
    });
    await userCertificateManager.initialize();
  }
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    alternateHostname: ["127.0.0.1", "localhost"],
    serverCertificateManager: certificateManager,
    userCertificateManager,
    securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes128_Sha256_RsaOaep, SecurityPolicy.Aes256_Sha256_RsaPss],
    securityModes: [MessageSecurityMode.None, MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: true,
    userManager: { isValidUser: (user, pass) => user === "operator" && pass === "secret" },
    serverInfo: { applicationUri: "urn:ferry:nodeopcua-test", productUri: "urn:ferry:nodeopcua-test" },
    buildInfo: { productName: "ferry node-opcua test server" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace("urn:ferry:nodeopcua");
  const machine = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Machine" });
  let temperature = 20.0;
  let counter = 0;
  setInterval(() => { temperature = 20 + 5 * Math.sin(Date.now() / 1000); counter++; }, 100);
  ns.addVariable({
    componentOf: machine, nodeId: "s=Temperature", browseName: "Temperature", dataType: "Double", minimumSamplingInterval: 50,
    value: { get: () => new Variant({ dataType: DataType.Double, value: temperature }) },
  });
  ns.addVariable({
    componentOf: machine, nodeId: "s=Counter", browseName: "Counter", dataType: "Int32", minimumSamplingInterval: 50,
    value: { get: () => new Variant({ dataType: DataType.Int32, value: counter }) },
  });
  ns.addVariable({
    componentOf: machine, nodeId: "s=Big", browseName: "Big", dataType: "Int64",
    value: new Variant({ dataType: DataType.Int64, arrayType: VariantArrayType.Scalar, value: [0x10000000, 1] }), // 2^60 + 1 as [high, low]
  });
  ns.addVariable({
    componentOf: machine, nodeId: "s=Setpoint", browseName: "Setpoint", dataType: "Double",
    accessLevel: "CurrentRead | CurrentWrite", userAccessLevel: "CurrentRead | CurrentWrite",
    value: new Variant({ dataType: DataType.Double, value: 42.5 }),
  });
  ns.addVariable({
    componentOf: machine, nodeId: "s=ReadOnly", browseName: "ReadOnly", dataType: "Double",
    accessLevel: "CurrentRead", userAccessLevel: "CurrentRead",
    value: new Variant({ dataType: DataType.Double, value: 7.25 }),
  });
  ns.addVariable({
    componentOf: machine, nodeId: "s=Secret", browseName: "Secret", dataType: "Double",
    accessLevel: "CurrentWrite", userAccessLevel: "CurrentWrite",
    value: new Variant({ dataType: DataType.Double, value: 1 }),
  });
  // Writable nodes of several types, for ferry's write type mapping.
  for (const [name, dataType, value] of [["WInt16", "Int16", 0], ["WUInt32", "UInt32", 0], ["WFloat", "Float", 0],
    ["WBool", "Boolean", false], ["WString", "String", ""]]) {
    ns.addVariable({
      componentOf: machine, nodeId: "s=" + name, browseName: name, dataType,
      accessLevel: "CurrentRead | CurrentWrite", userAccessLevel: "CurrentRead | CurrentWrite",
      value: new Variant({ dataType: DataType[dataType], value }),
    });
  }
  await server.start();
  const pem = fs.readFileSync(server.certificateFile, "utf8");
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const der = Buffer.from(b64, "base64");
  const thumb = crypto.createHash("sha256").update(der).digest("hex");
  process.stdout.write(`READY ${thumb}\n`);
  const stop = async () => { await server.shutdown(0); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
})().catch((err) => { console.error(err); process.exit(1); });
