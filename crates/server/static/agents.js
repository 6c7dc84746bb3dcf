// Agents: approve a pairing code, list the agents with their devices, revoke.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const $ = (id) => document.getElementById(id);
  const tbody = $('agents-table').querySelector('tbody');

  function cell(text) {
    const td = document.createElement('td');
    td.textContent = text == null ? '' : String(text);
    return td;
  }

  async function load() {
    let agents;
    try {
      const data = await Keyward.api('GET', '/api/v1/agents');
      agents = Array.isArray(data) ? data : (data && (data.items || data.agents)) || [];
    } catch (e) {
      if (e.status === 404) {
        $('agents-unavailable').hidden = false;
        return;
      }
      Keyward.pageError(e);
      return;
    }
    tbody.replaceChildren();
    if (!agents.length) {
      const tr = document.createElement('tr');
      const td = cell('No agent yet.');
      td.colSpan = 6;
      td.className = 'muted';
      tr.append(td);
      tbody.append(tr);
    }
    for (const a of agents) {
      const tr = document.createElement('tr');
      tr.dataset.agent = a.id;
      const devices = (a.devices || []).map((d) => d.serial).join(', ');
      tr.append(cell(a.name), cell(a.online === true ? `${a.status} (online)` : a.status),
        cell(a.owner), cell(a.last_seen_at), cell(devices));
      const actions = document.createElement('td');
      if (a.status !== 'revoked') {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'small';
        b.textContent = 'Revoke';
        b.addEventListener('click', async () => {
          if (!window.confirm(`Revoke agent ${a.name}? It can no longer reach this server.`)) return;
          try {
            await Keyward.api('POST', `/api/v1/agents/${encodeURIComponent(a.id)}/revoke`);
            load();
          } catch (e) {
            Keyward.pageError(e);
          }
        });
        actions.append(b);
      }
      tr.append(actions);
      tbody.append(tr);
    }
  }

  $('approve-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const code = $('pairing-code').value.trim().toUpperCase();
    Keyward.pageError(null);
    try {
      const r = await Keyward.api('POST', '/api/v1/agents/approve', { code });
      $('approve-result').textContent = `Agent ${(r && r.name) || ''} is paired.`;
      $('approve-result').hidden = false;
      $('pairing-code').value = '';
      load();
    } catch (e) {
      Keyward.pageError(e);
    }
  });
  $('refresh-agents').addEventListener('click', load);
  load();
  setInterval(load, 5000);
});
