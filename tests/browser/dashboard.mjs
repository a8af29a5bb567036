// Opens the supervision dashboard in headless Chromium and reports what a person would
// have seen, as one JSON line on stdout: the tree's rows, each restart event with when
// the service logged it and when the page showed it, and, once the run has ended, the
// counts the page shows. Takes a screenshot on the way.
//
//   node dashboard.mjs URL SCREENSHOT.png [RIPPLE_SCREENSHOT.png]
import { chromium } from "playwright-core";

const [url, shot, rippleShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // The machine's network is closed: without these Chromium keeps trying Google's hosts.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#tree tbody tr").length >= 5, null, { timeout: 15000 });
  const children = await page.$$eval("#tree tbody tr", (rows) => rows.map((r) => ({
    name: r.dataset.child,
    restartType: r.children[1].textContent,
    state: r.children[2].textContent,
  })));
  // A restart, as it happens; under one-for-all, the siblings it restarted flash too.
  await page.waitForFunction(() => [...document.querySelectorAll("#events li")]
    .some((li) => li.textContent.includes("Supervision: restarting")), null, { timeout: 30000 });
  if (rippleShot) {
    await page.waitForTimeout(150);
    await page.screenshot({ path: rippleShot, fullPage: true });
  }
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("finished"), null, { timeout: 60000 });
  const restarts = await page.$$eval("#events li", (items) => items
    .filter((li) => li.textContent.includes("Supervision: restarting"))
    .map((li) => ({ tMs: Number(li.dataset.tMs), receivedMs: Number(li.dataset.receivedMs), text: li.textContent })));
  const counts = await page.$$eval("#counts td[id^=count-]", (cells) =>
    Object.fromEntries(cells.map((c) => [c.id.slice("count-".length), Number(c.textContent)])));
  const status = await page.textContent("#status");
  const finalStates = await page.$$eval("#tree tbody tr", (rows) => rows.map((r) => r.children[2].textContent));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ children, restarts, counts, status, finalStates }));
} finally {
  await browser.close();
}
