// The dashboard's script, served as /dashboard/app.js (the
// Content-Security-Policy allows no inline script). On the inbox it
// listens to the unit's events and re-fetches the rows on each one, and
// once when the stream (re)connects so nothing that changed in between is
// missed.
'use strict';
(() => {
  const inbox = document.getElementById('inbox');
  if (!inbox) return;
  const live = document.getElementById('live');
  async function refresh(changed) {
    const r = await fetch('/dashboard/inbox', { credentials: 'same-origin' });
    if (r.status === 401) {
      // The session has ended (idle, signed out, or the account's access
      // was ended): back to the sign-in page.
      window.location.assign('/dashboard/login');
      return;
    }
    if (!r.ok) return;
    inbox.innerHTML = await r.text();
    if (changed) {
      const row = inbox.querySelector('[data-report="' + changed + '"]');
      if (row) row.classList.add('new');
      live.textContent = 'Report ' + changed.slice(0, 8) + ' updated just now.';
    }
  }
  const es = new EventSource('/dashboard/events');
  es.addEventListener('report', (e) => refresh(JSON.parse(e.data).report_id));
  es.addEventListener('lagged', () => refresh(null));
  // Catch up on anything that changed between rendering and connecting.
  es.addEventListener('open', () => refresh(null));
})();
