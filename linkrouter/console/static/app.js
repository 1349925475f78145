// The console: sign in, then one page at a time by the URL's # (#tokens, #usage,
// #accounts, #audit), each drawn from the admin API.

import { api, onSignedOut, setSession } from './api.js';
import { el, errorBox } from './dom.js';
import * as tokens from './tokens.js';
import * as usage from './usage.js';
import * as accounts from './accounts.js';
import * as audit from './audit.js';

const PAGES = { tokens, usage, accounts, audit };
const $ = (id) => document.getElementById(id);

function showSignIn(message) {
  setSession(null);
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  $('page').hidden = true;
  $('page').replaceChildren();
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  $('sign-in-key').focus();
}

function signedIn(session) {
  setSession(session.csrf_token);
  $('sign-in').hidden = true;
  $('sign-in-error').textContent = '';
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('page').hidden = false;
  show();
}

// Draw the page the # names into a fresh container: a slow answer for a page left
// behind lands in a container no longer shown.
async function show() {
  if ($('nav').hidden) return;
  const name = location.hash.replace(/^#/, '') || 'tokens';
  const page = PAGES[name] || tokens;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.page === name);
  }
  const container = el('div', { class: 'page', dataset: { page: name } });
  $('page').replaceChildren(container);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · linkrouter console`;
  try {
    await page.render(container);
  } catch (e) {
    if (e.status !== 401) container.append(errorBox(e));
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = $('sign-in-key');
  const button = event.target.querySelector('button');
  button.disabled = true;
  try {
    const session = await api('POST', 'session', { key: input.value });
    input.value = '';
    signedIn(session);
  } catch (e) {
    $('sign-in-error').textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try {
    await api('DELETE', 'session');
  } finally {
    showSignIn('Signed out.');
  }
}

async function start() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', show);
  onSignedOut((message) => showSignIn(message));
  try {
    signedIn(await api('GET', 'session'));
  } catch (e) {
    showSignIn(e.status === 401 ? '' : e.message);
  }
}

start();
