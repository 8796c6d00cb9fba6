// Starts kinesalite (in memory) on 127.0.0.1:PORT: its own CLI binds every
// interface. Streams become ACTIVE after 50 ms instead of 500, so tests do
// not wait. Usage: node kinesalite.js MODULES_DIR PORT
const path = require('path');
const kinesalite = require(path.join(process.argv[2], 'kinesalite'));
const port = Number(process.argv[3]);
kinesalite({ createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 200 })
  .listen(port, '127.0.0.1', (err) => {
    if (err) { console.error(err); process.exit(1); }
    console.log(`kinesalite listening on 127.0.0.1:${port}`);
  });
